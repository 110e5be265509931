"""One module per subcommand: ``HELP``, ``add_arguments(parser)``, ``main(args, pipeline_args) -> int``.

Modules that submit Beam jobs set ``BEAM = True``: arguments the command does not define are
validated as Beam pipeline options (``--runner``, ``--direct_num_workers``, Dataflow's …) and
passed in ``pipeline_args``; anything else fails fast, naming the flag.
"""
