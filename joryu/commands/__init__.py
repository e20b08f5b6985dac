"""The command line, one module per command: each has ``HELP``, ``configure(parser)`` (its
arguments) and ``run(args) -> exit status``. ``joryu.cli`` parses and dispatches; a new command
is a new module here and one line in ``COMMANDS``."""

COMMANDS = {  # name -> the module that holds the command
    "distill": "joryu.commands.distill",
    "run": "joryu.commands.run",
    "compare": "joryu.commands.compare",
    "config": "joryu.commands.config",
    "methods": "joryu.commands.methods",
    "models": "joryu.commands.models",
    "datasets": "joryu.commands.datasets",
    "reproduce": "joryu.commands.reproduce",
    "eval": "joryu.commands.eval",
    "export": "joryu.commands.export",
    "report": "joryu.commands.report",
    "bench": "joryu.commands.bench",
    "teacher-store": "joryu.commands.teacher_store",
}
