"""captionbeam.launch: the command line, runner profiles, job submission, the end-to-end run."""
