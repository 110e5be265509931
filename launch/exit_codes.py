"""The one exit-code policy of every ``captionbeam`` command (documented in docs/launch.md).

- ``OK`` (0): the command finished. Inputs it could not use are part of a finished run: they are
  reported (dead letters, ``error`` rows on stderr) and counted in the summary, never fatal.
- ``FAULT`` (1): the command started and did not finish, or its result cannot be trusted (a Beam
  stage or engine failed, a run's counters do not add up, a retrain attempt failed).
- ``USAGE`` (2): bad usage or bad input, named in the message; nothing was done (argparse's own
  code; ``caption`` when not one of its files could be captioned).
- ``OUTPUT_IN_USE`` (75, EX_TEMPFAIL): another run holds the output's lease; retry later.
- ``INTERRUPTED`` (130): stopped by Ctrl-C; a re-run resumes.
"""
OK = 0
FAULT = 1
USAGE = 2
OUTPUT_IN_USE = 75
INTERRUPTED = 130
