"""Progress bars in a Jupyter kernel without ipywidgets: the text bar, and no TqdmWarning."""

import subprocess
import sys
import textwrap

# A process that looks to tqdm like a Jupyter kernel (its test: ipykernel.zmqshell imported,
# an IPython shell that is not a console) and cannot import ipywidgets.
KERNEL_WITHOUT_WIDGETS = textwrap.dedent("""
    import sys, types, warnings
    warnings.simplefilter("always")  # every warning reaches stderr
    shell = type("ZMQInteractiveShell", (), {})()
    sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: shell)
    sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
    sys.modules["ipywidgets"] = None  # import ipywidgets -> ImportError
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KERNEL_WITHOUT_WIDGETS + textwrap.dedent(code)],
                          capture_output=True, text=True)


def test_plain_tqdm_auto_warns_there():  # the setup reproduces the warning, so the next test can fail
    proc = _run("from tqdm.auto import tqdm")
    assert proc.returncode == 0 and "IProgress not found" in proc.stderr


def test_progress_bar_falls_back_quietly_to_the_text_bar():
    proc = _run("""
        import tqdm.std
        from bimt.core.progress import progress_bar
        bar = progress_bar(range(3), total=3, disable=False)
        assert list(bar) == [0, 1, 2]
        assert isinstance(bar, tqdm.std.tqdm) and "notebook" not in type(bar).__mro__[1].__module__
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
