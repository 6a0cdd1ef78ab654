"""dstack's built-in providers.

Each is a folder with its ``schema.yaml`` (its parameters and their documentation) and its
``main.py``, written with the public SDK exactly like a custom provider. What they share is in
``common.yaml`` (the common parameters) and ``common.py``. A worker runs them from its own copy of
this folder (its provider host forks them: ``workers/provider_process.py``); the CLI reads their schemas
and command-line options to check a workflow before it is submitted.
"""
from pathlib import Path

#: The folder of the built-in providers.
FOLDER = Path(__file__).resolve().parent
#: Their names, as in ``provider: NAME`` and ``dstack run NAME ARGS``.
NAMES = ("bash", "curl", "docker", "python", "tensorboard", "torchrun")
