"""One module per CLI command, each with ``register(subparsers)`` and ``run(args)``.

A command imports its machinery inside ``run`` (and the helpers it calls), not at module level: the CLI
imports every command module to build its parser, and ``ifengine --help`` must load no torch.
"""
