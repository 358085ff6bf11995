"""docs/notebooks/colab_worker.ipynb: a clean, valid notebook whose non-Colab cells really run a worker.

The notebook is executed the way Jupyter runs it — nbclient driving a real IPython kernel
(ipykernel) — so its `!shardrun ...` lines, `{VAR}` expansion and the `_exit_code` checks behave as
they do in Colab, which is IPython too. Translating the cells by hand into subprocess calls would
test our translation, not the notebook. Cells tagged `colab-only` (install, sign-in, fetching the
job file from Drive) are skipped by tag; the `parameters` cell is followed by an injected cell
that points it at a job planned here on the local store, as papermill does.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell
from packaging.requirements import Requirement

from tests.conftest import job_text, write_images
from shardrun.config.job import load_job
from shardrun.plan.job import plan_job
from shardrun.ledger.db import Ledger
from shardrun.notebook_setup import missing_requirements
from shardrun.storage.local import LocalStore

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "colab_worker.ipynb"
COLAB_ONLY = "colab-only"
# 12 images, 4 patches each, batches of 16: 3 steps per epoch, 6 steps, chunks of 2 steps (as in
# test_worker.py); the notebook's worker trains 2 of the 3 chunks and leaves one for "the next session".
RUN = dict(name="espcn-x2", model="espcn", scale=2, channels=1, epochs=2, batch_size=16, patch_size=16,
           patches_per_image=4, patches_per_second=0.000943, seed=3)
FAST_WORKER = "--max-chunks 2 --settle-seconds 0.05 --poll-seconds 0.05"
# What credentials look like: Google access and refresh tokens, API keys, OAuth client secrets,
# private keys, and the job file's own `token = "..."`.
SECRETS = [r"ya29\.", r"1//0[\w-]{20}", r"AIza[\w-]{30}", r"GOCSPX-", r"-----BEGIN [A-Z ]*PRIVATE KEY",
           r'"(client_secret|refresh_token|private_key|access_token)"\s*:', r'\btoken\s*=\s*["\'][^"\']+["\']']


def tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # `!` runs commands in a terminal, so rich colours them


def cell_text(cell) -> str:
    """Returns everything a code cell printed (streams, results and error lines), less colours."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return ANSI.sub("", "".join(parts))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A hermetic Jupyter set-up: a kernelspec for this Python (the one with shardrun installed),
    its `shardrun` script first on PATH, and Jupyter's and IPython's folders inside tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("COLAB_RELEASE_TAG", "COLAB_GPU", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE"):
        monkeypatch.delenv(name, raising=False)  # this machine is "local": no session limit


def without_colab(parameters: dict):
    """Returns the notebook less its colab-only cells, with `parameters` injected after the
    parameters cell."""
    nb = read_notebook()
    cells = []
    for cell in nb.cells:
        if COLAB_ONLY in tags(cell):
            continue
        cells.append(cell)
        if "parameters" in tags(cell):
            source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
            cells.append(new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    nb.cells = cells
    return nb


def execute(nb, cwd: Path):
    """Runs the notebook's cells in order in a fresh kernel, in place; raises CellExecutionError
    at the first failing cell (the cells before it keep their outputs)."""
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs_by_id(nb) -> dict[str, str]:
    return {cell.id: cell_text(cell) for cell in nb.cells if cell.cell_type == "code" and "id" in cell}


def parameter_names(cell) -> set[str]:
    return {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def test_the_notebook_is_valid_clean_and_holds_no_credentials():
    raw = NOTEBOOK.read_text()
    nb = nbformat.reads(raw, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code), \
        "commit the notebook without outputs or execution counts"
    assert "widgets" not in nb.metadata
    for pattern in SECRETS:
        assert not re.search(pattern, raw), f"the notebook holds something like a credential ({pattern})"

    # One parameters cell, near the top, with every name a user edits (the test overrides them all).
    (parameters,) = [cell for cell in code if "parameters" in tags(cell)]
    assert nb.cells.index(parameters) < 4
    assert parameter_names(parameters) == {"SHARDRUN_SOURCE", "JOB_FILE", "JOB_FILE_DRIVE_ID", "ACCOUNT",
                                           "WORKER_OPTIONS"}
    # Whatever needs Colab (its modules, its GPU, installing into its runtime) is tagged colab-only,
    # and only that: the test runs every other cell.
    needs_colab = re.compile(r"google\.colab|nvidia-smi|%pip|pip install")
    for cell in code:
        assert bool(needs_colab.search(cell.source)) == (COLAB_ONLY in tags(cell)), cell.source[:80]
    sign_in = next(cell for cell in code if "authenticate_user" in cell.source)
    assert "try:" in sign_in.source and "except ImportError" in sign_in.source
    # The install keeps Colab's GPU TensorFlow: shardrun alone, then its other missing dependencies.
    install = next(cell for cell in code if "%pip" in cell.source)
    assert "--no-deps" in install.source and "{SHARDRUN_SOURCE}" in install.source

    text = " ".join(" ".join(cell.source.split()) for cell in nb.cells if cell.cell_type == "markdown")
    assert "stops cleanly before the session's limit, and the next session picks up" in text
    assert "responsible-use.md" in text
    assert not re.search(r"keep.?alive\(|setInterval|\.click\(\)", raw, re.IGNORECASE)


# A Colab runtime's packages (versions as Colab shipped them in 2025): the GPU `tensorflow`, no
# `tensorflow-cpu`, no sqlite-utils, everything else shardrun needs already there.
COLAB_PACKAGES = {"tensorflow": "2.19.0", "numpy": "2.0.2", "pillow": "11.3.0", "click": "8.2.1", "rich": "13.9.4",
                  "tenacity": "9.1.2", "scikit-image": "0.25.2", "google-api-python-client": "2.177.0",
                  "google-auth": "2.38.0", "google-auth-httplib2": "0.2.0", "google-auth-oauthlib": "1.2.2",
                  "matplotlib": "3.10.0", "packaging": "25.0"}


def shardrun_requirements() -> list[str]:
    """The installed shardrun's own requirement lines (pyproject's, extras and markers included)."""
    requirements = importlib.metadata.requires("shardrun")
    assert any(line.startswith("tensorflow-cpu") for line in requirements)  # the case this is all about
    return requirements


def test_on_colab_only_missing_dependencies_are_installed_and_tensorflow_is_kept():
    needed = missing_requirements(shardrun_requirements(), COLAB_PACKAGES.get, has_tensorflow=True)
    assert not [line for line in needed if line.startswith("tensorflow")]  # Colab's GPU build stays
    assert "sqlite-utils>=3.36" in needed
    assert all(Requirement(line).name not in COLAB_PACKAGES for line in needed)  # nothing Colab has is touched
    assert not [line for line in needed if "extra" in line]  # neither [gpu] nor [test]


def test_too_old_packages_and_a_missing_tensorflow_are_installed():
    old_numpy = dict(COLAB_PACKAGES, numpy="1.24.4")
    assert "numpy>=1.26" in missing_requirements(shardrun_requirements(), old_numpy.get, has_tensorflow=True)
    # A runtime without any TensorFlow gets the one pyproject names for this kind of machine.
    without_tensorflow = {name: v for name, v in COLAB_PACKAGES.items() if name != "tensorflow"}
    needed = missing_requirements(shardrun_requirements(), without_tensorflow.get, has_tensorflow=False)
    assert len([line for line in needed if line.startswith("tensorflow")]) == 1


@pytest.fixture
def planned_job(tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    path = tmp_path / "job.toml"
    path.write_text(job_text(accounts=[("alice", 1), ("bob", 1)], runs=[RUN], reserve_mb=0))
    plan_job(load_job(path), scan_workers=1)
    return path


def test_the_notebook_outside_colab_checks_trains_and_reports(planned_job, kernel_env, tmp_path):
    nb = execute(without_colab(dict(JOB_FILE=str(planned_job), ACCOUNT="bob", WORKER_OPTIONS=FAST_WORKER)), tmp_path)
    out = outputs_by_id(nb)

    # The dependency cell found everything installed and kept this machine's TensorFlow.
    assert "TensorFlow: tensorflow" in out["dependencies"] and "(kept as installed)" in out["dependencies"]
    assert "0 other dependencies installed" in out["dependencies"]
    assert "Job 'test-job'" in out["read-job-file"] and "accounts alice, bob" in out["read-job-file"]
    check = out["accounts-check"]
    assert "alice" in check and "bob" in check and "FAILED" not in check and check.count(" ok ") == 2
    assert "espcn-x2" in out["status-before"] and "0/6" in out["status-before"]

    # The worker trained two chunks, each from the one before, and stopped as told.
    worker = out["worker"]
    assert "espcn-x2 chunk 0: done at step 2 (from 0" in worker
    assert "espcn-x2 chunk 1: done at step 4 (from 2" in worker
    assert "worker stopped: max-chunks" in worker
    assert "espcn-x2" in out["status-after"] and "4/6" in out["status-after"]

    # The ledger and the home store agree: two chunks done with verified checkpoints, one left.
    job = load_job(planned_job)
    ledger = Ledger.open(job.ledger_path)
    assert [(r["name"], r["steps_done"], r["steps_total"]) for r in ledger.runs()] == [("espcn-x2", 4, 6)]
    chunks = ledger.chunks("espcn-x2")
    assert [c["state"] for c in chunks] == ["done", "done", "ready"]
    home = LocalStore(tmp_path / "stores" / "alice")
    for chunk in chunks[:2]:
        assert home.stat(chunk["checkpoint_key"]).md5 == chunk["checkpoint_md5"]
    assert chunks[2]["start_checkpoint_key"] == chunks[1]["checkpoint_key"]  # the next session's start


def test_a_failing_account_check_stops_the_notebook_before_any_worker(kernel_env, tmp_path):
    # carol's store is a file, not a folder: her account cannot be written.
    write_images(tmp_path / "images", 4, size=(48, 40))
    (tmp_path / "blocked").write_text("not a folder")
    text = job_text(accounts=[("alice", 1)], runs=[RUN])
    text = text.replace("[[runs]]", '[[accounts]]\nname = "carol"\nstore = "local://blocked"\n\n[[runs]]', 1)
    (tmp_path / "job.toml").write_text(text)
    nb = without_colab(dict(JOB_FILE=str(tmp_path / "job.toml"), ACCOUNT="alice", WORKER_OPTIONS=FAST_WORKER))
    with pytest.raises(CellExecutionError) as failure:
        execute(nb, tmp_path)
    assert "shardrun accounts check failed" in str(failure.value)
    out = outputs_by_id(nb)
    assert "FAILED" in out["accounts-check"] and "blocked is a file, not a folder" in out["accounts-check"]
    assert out["worker"] == "" and out["status-after"] == ""  # never ran
    assert not (tmp_path / "stores" / "alice" / "test-job" / "journal").exists()  # no worker wrote anything


def test_the_unchanged_notebook_takes_a_replica_of_a_collaborative_run(kernel_env, tmp_path):
    write_images(tmp_path / "images", 12, size=(48, 40))
    path = tmp_path / "job.toml"
    together = dict(RUN, name="together", epochs=4, mode="collaborative", replicas=3, sync_every=2)
    path.write_text(job_text(accounts=[("alice", 1), ("bob", 1)], runs=[together], reserve_mb=0))
    plan_job(load_job(path), scan_workers=1)
    # A member opens the notebook; another session already holds replica 0 of round 0.
    from shardrun.journal import Journal

    job = load_job(path)
    home = LocalStore(tmp_path / "stores" / "alice")
    Journal(home, job.name).append("claim", "carol-colab", "together", 0, 0, {})
    nb = execute(without_colab(dict(JOB_FILE=str(path), ACCOUNT="bob", WORKER_OPTIONS=FAST_WORKER)), tmp_path)
    worker = outputs_by_id(nb)["worker"]
    # The worker took the two replicas left in round 0, each on its own part, and stopped as told.
    assert sorted(re.findall(r"together round 0 replica (\d): done at step 2 \(from 0", worker)) == ["1", "2"]
    assert "worker stopped: max-chunks" in worker
    ledger = Ledger.open(job.ledger_path)
    units = {(c["round"], c["replica"]): c for c in ledger.chunks("together")}
    assert [units[(0, i)]["state"] for i in range(3)] == ["running", "done", "done"]
    for i in (1, 2):
        assert home.stat(units[(0, i)]["change_key"]).md5 == units[(0, i)]["change_md5"]
    assert ledger.rounds("together")[0]["state"] == "open"  # waiting for carol's change
