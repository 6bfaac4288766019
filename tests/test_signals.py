"""Where grow's handlers of Ctrl-C and SIGTERM raise (`grow_cli.signals`): each test lands the signal at one exact
point, by a step that raises it as it returns, and checks what that point needs."""

from __future__ import annotations

import _imp
import importlib
import importlib._bootstrap
import signal
import sys
import textwrap
import threading
import types
import weakref

import pytest


def _importlib_step(name: str, real):
    """`real`, made a function of importlib's own module (as `_imp.acquire_lock` is called from it), that raises
    Ctrl-C's signal as it returns, the first time only."""
    namespace = {"__name__": "importlib._bootstrap", "real": real, "signal": signal, "done": []}
    exec(
        textwrap.dedent(
            f"""
            def {name}(*args):
                result = real(*args)
                if not done:
                    done.append(True)
                    signal.raise_signal(signal.SIGINT)
                return result
            """
        ),
        namespace,
    )
    return namespace[name]


def test_ctrl_c_inside_importlibs_lock_keeping_is_raised_outside_it(tmp_path, monkeypatch, grow_handlers):
    """Ctrl-C right after importlib took its global import lock (before the `try` that releases it) left the lock held
    by the main thread: a background thread importing anything new then waited forever, and `grow expand` hung. It is
    now raised at the first code outside importlib (here the imported module's body), which importlib unwinds."""
    (tmp_path / "grow_test_interrupted_import.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = types.SimpleNamespace(**{name: getattr(_imp, name) for name in dir(_imp) if not name.startswith("__")})
    fake.acquire_lock = _importlib_step("acquire_lock", _imp.acquire_lock)
    tracing = sys.gettrace()
    importlib._bootstrap._imp = fake  # type: ignore[attr-defined]
    try:
        with pytest.raises(KeyboardInterrupt):
            import grow_test_interrupted_import  # noqa: F401
    finally:
        importlib._bootstrap._imp = _imp  # type: ignore[attr-defined]
        leaked = _imp.lock_held()
        while _imp.lock_held():  # (only where the lock leaked, so that the rest of the session can import)
            _imp.release_lock()
    assert not leaked and sys.gettrace() is tracing  # (the trace function that raised it is gone)
    importer = threading.Thread(target=importlib.import_module, args=("grow_test_interrupted_import",), daemon=True)
    importer.start()
    importer.join(timeout=60)
    assert not importer.is_alive(), "another thread cannot import the module: a lock was left held"
    assert sys.modules.pop("grow_test_interrupted_import").VALUE == 1


def test_ctrl_c_that_an_extensions_initialisation_swallows_is_raised_once_it_returns(
    tmp_path, monkeypatch, grow_handlers
):
    """torch's C++ initialisation imports numpy and clears whatever that import raised: a Ctrl-C landing in it was
    lost, and `grow expand` went on to write its whole output (exit 0). It is now raised again where the
    initialisation returns to Python."""
    (tmp_path / "grow_test_imported_by_extension.py").write_text("import signal\nsignal.raise_signal(signal.SIGINT)\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def initialise(spec):  # as torch's C++ does with its import of numpy
        try:
            import grow_test_imported_by_extension  # noqa: F401
        except BaseException:  # noqa: BLE001 - PyErr_Clear()
            pass
        return types.ModuleType(spec.name)

    monkeypatch.setattr(_imp, "create_dynamic", initialise)
    with pytest.raises(KeyboardInterrupt):
        importlib._bootstrap._call_with_frames_removed(_imp.create_dynamic, types.SimpleNamespace(name="ext"))  # type: ignore[attr-defined]
        pytest.fail("the interruption was lost")
    monkeypatch.undo()
    assert "grow_test_imported_by_extension" not in sys.modules


def test_ctrl_c_during_torch_distributeds_native_initialisation_is_raised_at_its_next_line(grow_handlers):
    """torch.distributed's body calls `_c10d_init()`, whose C++ aborts the process when a Python exception is raised
    while it runs ("terminate called after throwing an instance of 'pybind11::error_already_set'"): a Ctrl-C during
    `import torch` landed there in 2 of 286 interrupted runs (exit -6). It is now raised at the body's next line.
    Here `signal.raise_signal` is that native call: it runs the handler before it returns."""
    seen: list[str] = []
    body = compile(
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    seen.append('raised inside the native call')\n"
        "seen.append('the next line ran')\n",
        "<torch/distributed/__init__.py>",
        "exec",
    )
    with pytest.raises(KeyboardInterrupt):
        exec(body, {"__name__": "torch.distributed", "signal": signal, "seen": seen})
    assert seen == []


DROPPING = ["a weakref callback", "a finaliser", "a library's weakref callback", "what a finaliser calls"]


@pytest.mark.parametrize("where", DROPPING)
def test_ctrl_c_in_code_whose_exceptions_python_drops_is_raised_in_the_code_it_interrupted(where, grow_handlers):
    """Python prints and drops an exception raised in a weakref callback or a `__del__`, which the garbage
    collector runs inside whatever code allocated: a Ctrl-C landing there printed "Exception ignored in: <function
    WeakSet.__init__.<locals>._remove>" with a traceback, and the run went on. It is now raised at the next line of
    the code that was interrupted, and nothing is dropped: kept out of weakref's own callbacks and `__del__`
    beforehand, caught by grow's `sys.unraisablehook` from any other callback and from what a finaliser calls."""
    module = "_weakrefset" if where == "a weakref callback" else "some_library"
    namespace = {"__name__": module, "signal": signal}
    exec("def _remove(item):\n    signal.raise_signal(signal.SIGINT)\n", namespace)

    class Thing:
        pass

    class Finalised:
        def __del__(self):
            if where == "a finaliser":
                signal.raise_signal(signal.SIGINT)
            else:
                namespace["_remove"](self)

    thing = Finalised() if "finaliser" in where else Thing()
    if "callback" in where:
        ref = weakref.ref(thing, namespace["_remove"])  # noqa: F841 - alive until the callback runs
    with pytest.raises(KeyboardInterrupt):
        del thing  # the callback or the finaliser runs here, inside this code
        pytest.fail("the interruption was dropped")


def test_other_exceptions_python_drops_go_to_the_hook_that_was_there_before(grow_handlers, monkeypatch):
    """grow's `sys.unraisablehook` takes only interruptions; another exception in a finaliser is reported as
    before, by the hook grow found, and nothing is raised."""
    from grow_cli.signals import remember_interrupts

    dropped: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    remember_interrupts()

    class Finalised:
        def __del__(self):
            raise ValueError("in a finaliser")

    thing = Finalised()
    del thing
    assert [type(u.exc_value) for u in dropped] == [ValueError]  # type: ignore[attr-defined]
