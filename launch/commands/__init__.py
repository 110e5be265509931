"""One module per subcommand, each with the same face (``launch/command_face.py``): ``HELP``,
``add_arguments(parser)``, ``config_from_args(args) -> Config``, ``plan(config) -> Plan``, ``run(config, ...)
-> Result`` (both with ``summary_lines()``), and ``main(args, runner) -> int`` that only prints
(``cli.run_command`` turns what it raises into one line and an exit code).

Modules that submit Beam jobs set ``BEAM = True``: arguments the command does not define are
validated as Beam pipeline options (``--runner``, ``--direct_num_workers``, Dataflow's …), parsed once
into the frozen ``RunnerFlags`` passed as ``runner``; anything else fails fast, naming the flag.
"""
