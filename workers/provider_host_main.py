"""The provider host's own program: run by ``workers/provider_process.py`` as ``python -S -s THIS_FILE``.

It runs with a clean environment and no site-packages, the worker's SDK bundle on ``PYTHONPATH`` (the
standard library and the bundle are all it can import), loads the SDK and every built-in provider once,
then forks one child per request. Requests come on standard input, one JSON object per line::

    {"id": "...", "name": "docker", "cwd": "/task/work", "env": {...}, "output": "/task/io/output"}

and the answers go to standard output, one JSON object per line: ``{"id": ..., "pid": PID}`` once the child
is forked, ``{"id": ..., "exit": CODE}`` once it has exited (``-N`` when a signal ``N`` ended it), or
``{"id": ..., "error": "..."}`` when it could not be forked. The child is what ``python main.py`` in the
provider's container would be: its own process group, ``cwd``, only ``env`` as its environment, its output (both
streams) into the FIFO ``output``, and ``main.py`` of provider ``name`` run as ``__main__``. The host exits
when its standard input ends (the worker is gone); children still running finish on their own.

Standard library only, Python 3.8: it runs in the worker's interpreter, whatever that is, without site-packages.
"""
from __future__ import annotations

import importlib
import json
import os
import runpy
import selectors
import signal
import sys
import traceback

#: The built-in providers' folder in the bundle (``dstack/providers``), loaded once by the host.
PROVIDERS = os.path.join(os.environ["DSTACK_BUNDLE_SITE"], "dstack", "providers")


def preload(names: list) -> None:
    """Import the SDK and each provider's module once, so that a child only runs what is left."""
    for name in names:
        try:
            importlib.import_module(f"dstack.providers.{name}.main")
        except Exception:  # the child will fail the same way and say why, in the task's logs
            pass


def child(request: dict) -> None:
    """In the forked child: become the provider's process and run it; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # a group of its own, which the worker signals (the host makes it so too, first)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        output = os.open(request["output"], os.O_WRONLY)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        main = os.path.join(PROVIDERS, request["name"], "main.py")
        sys.argv = [main]
        sys.path.insert(0, os.path.dirname(main))  # as `python main.py` does
        runpy.run_path(main, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    names = [n for n in sorted(os.listdir(PROVIDERS)) if os.path.isfile(os.path.join(PROVIDERS, n, "main.py"))]
    preload(names)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the wakeup fd
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "requests")
    selector.register(wake_read, selectors.EVENT_READ, "children")
    running = {}  # pid -> request id
    pending = b""
    answer({"ready": True})
    while True:
        for key, _ in selector.select():
            if key.data == "children":
                os.read(wake_read, 512)
                continue
            data = os.read(0, 65536)
            if not data:  # the worker is gone
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as e:
                    answer({"id": request["id"], "error": f"could not fork the provider: {e}"})
                    continue
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    selector.close()
                    os.close(wake_read)
                    os.close(wake_write)
                    child(request)
                try:  # before the answer: the group exists as soon as the worker can signal it
                    os.setpgid(pid, pid)
                except OSError:  # the child did it first, or has already exited
                    pass
                running[pid] = request["id"]
                answer({"id": request["id"], "pid": pid})
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            request_id = running.pop(pid, None)
            if request_id is not None:
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
                answer({"id": request_id, "exit": code})


if __name__ == "__main__":
    serve()
