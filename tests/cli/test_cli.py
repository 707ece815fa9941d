import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, mixed_frame
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.io.tables import iter_table
from pipelines.registry.pointer import pointer_path, production_tag
from pipelines.registry.promotion import promote

runner = CliRunner()


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory):
    frame = mixed_frame(1500, seed=0)
    frame["label"] = 0
    odd = mixed_frame(60, seed=1).assign(label=1)
    odd["amount"] *= 40
    path = tmp_path_factory.mktemp("data") / "train.csv"
    pd.concat([frame, odd], ignore_index=True).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tag(labelled_csv):
    result = runner.invoke(app, ["train", str(labelled_csv), "--name", "cli-test", "--exclude",
                                 "id", "--label", "label", "--max-epochs", "5"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_bad_training_value_is_named_by_its_row_in_the_file(tmp_path, fmt):
    frame = mixed_frame(1000, seed=0).assign(label=0)
    frame.loc[5, "label"] = 1  # dropped before sampling: the sample's rows are not the file's
    frame.loc[999, "amount"] = np.inf
    path = tmp_path / f"train.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    result = runner.invoke(app, ["train", str(path), "--exclude", "id", "--label", "label",
                                 "--max-epochs", "1"])
    assert result.exit_code == 2, result.output
    line = " (line 1001 of the CSV)" if fmt == "csv" else ""
    assert result.stderr.strip() == (f"error: {path}: column 'amount', row 999: infinite value "
                                     f"inf is not allowed{line}")


@pytest.mark.parametrize(("extra", "options", "clash"), [
    ("score", [], "['score']"), ("q_value", ["--fdr", "0.1"], "['q_value']"),
    ("top2_column", ["--explain", "--explain-top", "2"], "['top2_column']")])
def test_score_refuses_input_columns_named_like_its_output(tag, tmp_path, extra, options, clash):
    source, out = tmp_path / "in.csv", tmp_path / "out.parquet"
    mixed_frame(50, seed=3).assign(**{extra: 1.0}).to_csv(source, index=False)
    result = runner.invoke(app, ["score", tag, str(source), "--output", str(out), *options])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: {source}: column(s) {clash} have the names of "
                                     "columns score adds to its output; rename them in the input")
    assert not out.exists()


def test_codes_that_look_like_numbers_score_the_same_from_csv_and_parquet(tmp_path):
    frame = mixed_frame(600, seed=2).drop(columns=["id"])
    frame["zip"] = np.random.default_rng(0).choice(["02134", "10001", "94105"], len(frame))
    frame.to_parquet(tmp_path / "train.parquet")
    result = runner.invoke(app, ["train", str(tmp_path / "train.parquet"), "--name", "cli-zip",
                                 "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    tag = result.stdout.strip().splitlines()[-1]
    frame.head(40).to_parquet(tmp_path / "in.parquet")
    frame.head(40).to_csv(tmp_path / "in.csv", index=False)  # 02134 is written as 02134
    scored = {}
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"out-{fmt}.csv"
        result = runner.invoke(app, ["score", tag, str(tmp_path / f"in.{fmt}"), "--output",
                                     str(out)])
        assert result.exit_code == 0, result.output
        scored[fmt] = pd.read_csv(out, dtype={"zip": str})
    pd.testing.assert_frame_equal(scored["csv"], scored["parquet"])
    assert set(scored["csv"]["zip"]) == {"02134", "10001", "94105"}


@pytest.mark.parametrize("name", ["../x", "a/b", "UPPER", "a:b", "-x", "x" * 64])
def test_a_bad_model_name_is_refused_before_training(labelled_csv, name):
    started = time.monotonic()
    result = runner.invoke(app, ["train", str(labelled_csv), "--name", name])
    assert result.exit_code == 2 and "is not a model name" in result.output, result.output
    assert time.monotonic() - started < 5  # nothing was trained


def test_retrain_refuses_a_report_path_it_cannot_write_before_training(labelled_csv, tmp_path):
    result = runner.invoke(app, ["retrain", str(labelled_csv), "--name", "cli-test",
                                 "--report", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory or cannot be written" in result.output


def test_models_names_a_damaged_pointer_and_lists_the_rest(tag):
    from pipelines.registry.store import load_detector, save_detector

    save_detector(load_detector(tag), "cli-damaged")
    path = pointer_path("cli-damaged")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{garbage")
    try:
        result = runner.invoke(app, ["models", "--json"])
    finally:
        path.unlink()
    assert result.exit_code == 0, result.output
    assert any(row["tag"].startswith("cli-damaged:") for row in json.loads(result.stdout))
    assert f"warning: the production pointer of cli-damaged ({path}) is damaged" in result.stderr


@pytest.mark.slow
def test_a_full_disk_while_saving_is_a_clear_error_and_leaves_nothing(labelled_csv, tmp_path):
    """``ulimit -f`` makes writes past 100 KiB fail with EFBIG, as a full disk fails them."""
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "BENTOML_HOME": str(home)}
    command = (f"ulimit -f 100; exec {sys.executable} -m pipelines.cli train {labelled_csv} "
               "--name cli-full --exclude id --label label --max-epochs 1")
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: could not write cli-full's files (is the disk full?): ")
    assert not list((home / "models").glob("cli-full/*/model.yaml"))
    assert not list((home / "flowad" / "tmp").glob("save-*"))


def test_models_warns_when_production_names_a_deleted_version(tag):
    import bentoml

    from pipelines.registry.store import load_detector, save_detector

    kept, deleted = (save_detector(load_detector(tag), "cli-dangling") for _ in range(2))
    promote(deleted)
    bentoml.models.delete(deleted)
    result = runner.invoke(app, ["models", "cli-dangling", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["tag"] for row in json.loads(result.stdout)] == [kept]
    assert (f"warning: the production model of cli-dangling is {deleted}, which is not in the "
            "store (deleted?)") in result.stderr


def test_train_prints_the_tag_and_models_lists_it(tag):
    assert tag.startswith("cli-test:")
    result = runner.invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "cli-test" in result.stdout


def test_train_mixes_two_realnvp_flows_unless_members_says_otherwise(tag, labelled_csv):
    from flowmodels import FlowMixture, RealNVP
    from pipelines.registry.store import load_detector

    default = load_detector(tag)
    assert isinstance(default.flow_, FlowMixture) and len(default.flow_.components) == 2
    result = runner.invoke(app, ["train", str(labelled_csv), "--name", "cli-one", "--exclude",
                                 "id", "--label", "label", "--max-epochs", "2", "--members", "1"])
    assert result.exit_code == 0, result.output
    assert "(1 flow(s))" in result.output
    single = load_detector(result.stdout.strip().splitlines()[-1])
    assert isinstance(single.flow_, RealNVP) and single.metrics_["members"] == 1


def test_train_ffjord_by_flow_matching_without_atoms(labelled_csv):
    from pipelines.registry.store import load_detector

    result = runner.invoke(app, ["train", str(labelled_csv), "--name", "cli-fm", "--model",
                                 "ffjord", "--objective", "flow_matching", "--exclude", "id",
                                 "--label", "label", "--max-epochs", "3", "--atom-share", "0"])
    assert result.exit_code == 0, result.output
    detector = load_detector(result.stdout.strip().splitlines()[-1])
    assert detector.model == "ffjord"
    assert detector.train_config_["objective"] == "flow_matching"
    assert detector.atom_share is None and detector.encoder_.atom_share is None


def test_train_trims_the_likelihood_on_request(labelled_csv):
    from pipelines.registry.store import load_detector

    result = runner.invoke(app, ["train", str(labelled_csv), "--name", "cli-trim", "--exclude",
                                 "id", "--max-epochs", "2", "--trim-share", "0.1"])
    assert result.exit_code == 0, result.output
    detector = load_detector(result.stdout.strip().splitlines()[-1])
    assert detector.train_config_["trim_share"] == 0.1
    refused = runner.invoke(app, ["train", str(labelled_csv), "--model", "ffjord", "--objective",
                                  "flow_matching", "--trim-share", "0.1", "--exclude", "id"])
    assert refused.exit_code == 2 and "trim_share" in refused.output


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_score_writes_the_input_columns_plus_verdicts(tag, labelled_csv, tmp_path, suffix):
    source = tmp_path / f"in{suffix}"
    frame = pd.read_csv(labelled_csv).drop(columns=["label"])
    frame.to_csv(source, index=False) if suffix == ".csv" else frame.to_parquet(source)
    out = tmp_path / f"out{suffix}"
    result = runner.invoke(app, ["score", tag, str(source), "--output", str(out),
                                 "--chunk-rows", "100"])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert list(scored.columns) == [*frame.columns, "score", "log_likelihood", "p_value",
                                    "is_anomaly"]
    assert len(scored) == len(frame)
    pd.testing.assert_frame_equal(scored[frame.columns], frame, check_dtype=False)
    assert scored.p_value.between(0, 1, inclusive="right").all()
    assert scored.is_anomaly.iloc[-60:].mean() > 0.8  # the labelled anomalies are flagged


def test_chunks_are_bounded(labelled_csv):
    sizes = [len(chunk) for chunk in iter_table(labelled_csv, 100)]
    assert max(sizes) == 100 and sum(sizes) == 1560


def test_evaluate_writes_metrics_and_plots(tag, labelled_csv, tmp_path):
    result = runner.invoke(app, ["evaluate", tag, str(labelled_csv), "--label", "label",
                                 "--report-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["roc_auc"] > 0.9
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "score_histograms.png", "roc_pr.png", "training_curve.png", "top_contributions.png"}


def test_evaluate_on_labels_of_one_kind_says_why_its_metrics_are_null(tag, tmp_path):
    data = tmp_path / "normal.csv"
    mixed_frame(200, seed=9).assign(label=0).to_csv(data, index=False)
    result = runner.invoke(app, ["evaluate", tag, str(data), "--label", "label",
                                 "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["roc_auc"] is None
    assert result.stderr.strip() == (f"warning: every row of {data} is labelled normal: ROC-AUC "
                                     "and average precision need both kinds (null in "
                                     "metrics.json)")


def test_a_bad_file_gives_a_clear_error(tag, tmp_path):
    bad = tmp_path / "bad.csv"
    mixed_frame(20).drop(columns=["amount"]).to_csv(bad, index=False)
    result = runner.invoke(app, ["score", tag, str(bad), "--output", str(tmp_path / "o.csv")])
    assert result.exit_code != 0
    assert "amount" in str(result.exception) + result.output


def _with_bad_row(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    frame = frame.astype({"amount": object})
    frame.loc[row, "amount"] = "oops"
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_bad_row_leaves_no_output_and_is_named_by_its_file_row(tag, tmp_path, suffix):
    frame = _with_bad_row(mixed_frame(400, seed=4).drop(columns=["id"]), 250)
    source = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        frame.to_csv(source, index=False)
    else:
        frame.astype({"amount": str}).to_parquet(source)
    out = tmp_path / f"out{suffix}"
    out.write_text("an earlier run's output")
    result = runner.invoke(app, ["score", tag, str(source), "--output", str(out),
                                 "--chunk-rows", "100"])
    assert result.exit_code == 2, result.output
    assert "row 250" in result.stderr and "index label" not in result.stderr
    assert "'amount'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_text() == "an earlier run's output"  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_tags_give_a_one_line_error(tmp_path, labelled_csv):
    for command in (["score", "no-such-model:v1", str(labelled_csv), "--output",
                     str(tmp_path / "o.csv")],
                    ["evaluate", "no-such-model:v1", str(labelled_csv), "--label", "label",
                     "--report-dir", str(tmp_path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and "no-such-model" in result.stderr
        assert "Traceback" not in result.output


def test_score_explain_adds_the_top_contributions(tag, labelled_csv, tmp_path):
    from pipelines.registry.store import load_detector

    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame = pd.read_csv(labelled_csv).drop(columns=["label"]).tail(150)
    frame.to_csv(source, index=False)
    result = runner.invoke(app, ["score", tag, str(source), "--output", str(out), "--explain",
                                 "--explain-top", "2", "--chunk-rows", "100"])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out)
    assert list(scored.columns[-4:]) == ["top1_column", "top1_contribution", "top2_column",
                                         "top2_contribution"]
    expected = load_detector(tag).explain(frame.reset_index(drop=True))
    assert (scored["top1_column"] == expected.idxmax(axis=1)).all()
    assert (scored["top1_contribution"] >= scored["top2_contribution"]).all()


def test_score_shows_progress_when_asked(tag, labelled_csv, tmp_path):
    source = tmp_path / "in.parquet"
    pd.read_csv(labelled_csv).drop(columns=["label"]).to_parquet(source)
    result = runner.invoke(app, ["score", tag, str(source), "--output", str(tmp_path / "o.csv"),
                                 "--chunk-rows", "500", "--progress"])
    assert result.exit_code == 0, result.output
    assert "1560/1560" in result.stderr


def _score_killed_while_writing(tag: str, tmp_path: Path, how: signal.Signals) -> int:
    """Starts ``flowad score`` on a large file, sends ``how`` once its hidden output exists,
    returns the exit status."""
    source = tmp_path / "big.csv"
    if not source.exists():
        pd.concat([mixed_frame(2000, seed=s).drop(columns=["id"]) for s in range(40)]).to_csv(
            source, index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "score", tag, str(source), "--output",
         str(tmp_path / "out.csv"), "--chunk-rows", "500", "--no-progress"], env=env, cwd=REPO,
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.csv.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".out.csv.*.tmp")), "the score never started writing"
    os.kill(process.pid, how)
    _, stderr = process.communicate(timeout=60)
    if how is signal.SIGTERM:
        assert stderr.strip().endswith("error: terminated by SIGTERM"), stderr
    return process.returncode


@pytest.mark.slow
def test_a_killed_score_never_leaves_a_truncated_output(tag, tmp_path):
    out = tmp_path / "out.csv"
    assert _score_killed_while_writing(tag, tmp_path, signal.SIGKILL) == -signal.SIGKILL
    (leftover,) = tmp_path.glob(".out.csv.*.tmp")  # SIGKILL runs no cleanup
    assert not out.exists()
    # The next score of the same target removes what the killed one left.
    result = runner.invoke(app, ["score", tag, str(tmp_path / "big.csv"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert not leftover.exists() and not list(tmp_path.glob(".out.csv.*"))
    assert len(pd.read_csv(out)) == 80_000


@pytest.mark.slow
def test_a_terminated_score_removes_its_partial_output(tag, tmp_path):
    (tmp_path / "out.csv").write_text("the previous output\n")
    assert _score_killed_while_writing(tag, tmp_path, signal.SIGTERM) == 128 + signal.SIGTERM
    assert not list(tmp_path.glob(".out.csv.*"))
    assert (tmp_path / "out.csv").read_text() == "the previous output\n"


def test_sigterm_after_the_command_finished_keeps_its_exit_status():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = runner.invoke(app, ["models", "--json"])
        assert result.exit_code == 0, result.output
        os.kill(os.getpid(), signal.SIGTERM)  # the command is done: nothing happens
        assert signal.getsignal(signal.SIGTERM).__name__ == "_finished"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_hidden_output_of_a_live_process_is_left_alone(tmp_path):
    from pipelines.io.processes import owner_tag
    from pipelines.io.writer import TableWriter

    live = tmp_path / f".out.csv.{owner_tag(os.getppid())}-0123abcd.tmp"
    other_host = tmp_path / ".out.csv.some-other-host-1-0123abcd.tmp"
    for path in (live, other_host):
        path.write_text("being written")
    with TableWriter(tmp_path / "out.csv") as writer:
        writer.write(pd.DataFrame({"a": [1]}))
    assert live.exists() and other_host.exists()


def test_models_json_and_a_broken_entry(tag):
    from pipelines.registry.bentoml_store import store_dir

    empty = store_dir() / "cli-test" / "zzzzkilledsave"
    empty.mkdir()
    try:
        result = runner.invoke(app, ["models", "--json"])
    finally:
        empty.rmdir()
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    row = next(r for r in rows if r["tag"] == tag)
    assert row["model_kind"] == "realnvp" and row["production"] is False
    assert str(empty) in result.stderr and result.stderr.startswith("warning: ")


def test_promote_refuses_a_model_with_nan_weights(tag):
    import torch

    from pipelines.registry.store import load_detector, save_detector

    broken = load_detector(tag)
    with torch.no_grad():
        next(broken.flow_.parameters()).fill_(float("nan"))
    bad_tag = save_detector(broken, "cli-test")
    result = runner.invoke(app, ["promote", bad_tag])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: refusing to promote {bad_tag}: non-finite")
    assert len(result.stderr.strip().splitlines()) == 1
    assert production_tag("cli-test") is None


# ------------------------------------------------------------------ conventions of issue 17
def test_version_and_help_text_keep_their_brackets():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("flowad ")
    result = runner.invoke(app, ["train", "--help"])
    assert "[default: 2 for realnvp, 1 for ffjord]" in " ".join(result.stdout.split())


def test_help_imports_no_torch_sklearn_or_skops():
    code = ("import sys\nfrom pipelines.cli import app\nsys.argv = ['flowad', '--help']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'skops', 'bentoml', 'pandas') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(("option", "value"), [("--model", "nvp"), ("--scaling", "minmax"),
                                               ("--objective", "flow_matching")])
def test_choices_are_checked_before_the_data_is_read(option, value, tmp_path):
    missing = tmp_path / "no-such-file.csv"
    result = runner.invoke(app, ["train", str(missing), option, value])
    assert result.exit_code == 2
    assert option in result.output and "no-such-file" not in result.output


def test_train_and_models_warn_when_the_table_is_too_small(tmp_path):
    """60 rows: too few for a split (12 rows) and for cross-conformal calibration on all of
    them (99 needed at 1%)."""
    path = tmp_path / "small.csv"
    mixed_frame(60, seed=0).to_csv(path, index=False)
    result = runner.invoke(app, ["train", str(path), "--name", "cli-small", "--exclude", "id",
                                 "--max-epochs", "1", "--members", "1"])
    assert result.exit_code == 0, result.output
    assert "warning: only 60 rows, every one of them calibrating (cross-conformal)" in (
        result.stderr)
    assert "at least 99" in result.stderr and "threshold inf" in result.stderr
    small = result.stdout.strip().splitlines()[-1]
    listed = runner.invoke(app, ["models", "cli-small", "--json"])
    assert "at least 99" in json.loads(listed.stdout)[0]["warning"]
    listed = runner.invoke(app, ["models", "cli-small"], env={"COLUMNS": "250"})
    assert f"warning: {small}: only 60 rows, every one of them calibrating" in listed.stderr


def test_recalibrate_saves_a_new_version_and_promotes_only_when_asked(tag):
    from pipelines.model.calibration import conformal_threshold
    from pipelines.registry.store import load_detector, save_detector

    result = runner.invoke(app, ["recalibrate", tag, "--target-fpr", "0.2"])
    assert result.exit_code == 0, result.output
    new_tag = result.stdout.strip().splitlines()[-1]
    assert new_tag.startswith("cli-test:") and new_tag != tag
    old, new = load_detector(tag), load_detector(new_tag)
    assert new.target_fpr == 0.2
    assert new.threshold_ == conformal_threshold(old.calibration_scores_, 0.2)
    assert production_tag("cli-test") is None  # not promoted
    copy_tag = save_detector(old, "cli-recalibrate")
    result = runner.invoke(app, ["recalibrate", copy_tag, "--target-fpr", "0.05", "--promote"])
    assert result.exit_code == 0, result.output
    assert production_tag("cli-recalibrate") == result.stdout.strip().splitlines()[-1]
    result = runner.invoke(app, ["recalibrate", tag, "--target-fpr", "1.5"])
    assert result.exit_code == 2 and "--target-fpr" in result.output


def test_score_with_fdr_flags_by_benjamini_hochberg_over_the_whole_file(tag, labelled_csv,
                                                                       tmp_path):
    from scipy.stats import false_discovery_control

    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["score", tag, str(labelled_csv), "--output", str(out),
                                 "--chunk-rows", "300", "--fdr", "0.1"])
    assert result.exit_code == 0, result.output
    assert "by Benjamini-Hochberg at FDR 0.1" in result.stdout
    scored = pd.read_csv(out)
    assert list(scored.columns[-5:]) == ["score", "log_likelihood", "p_value", "is_anomaly",
                                         "q_value"]
    # BH over every row of the file, not per chunk
    expected = false_discovery_control(scored["p_value"].to_numpy(), method="bh")
    np.testing.assert_allclose(scored["q_value"], expected, rtol=1e-12)
    np.testing.assert_array_equal(scored["is_anomaly"], expected <= 0.1)
    assert scored["is_anomaly"].iloc[-60:].mean() > 0.8
    false_discoveries = scored["is_anomaly"] & (scored["label"] == 0)
    assert false_discoveries.sum() <= 0.2 * max(1, scored["is_anomaly"].sum())
    result = runner.invoke(app, ["score", tag, str(labelled_csv), "--output", str(out),
                                 "--fdr", "0"])
    assert result.exit_code == 2 and "--fdr" in result.output


def test_train_says_which_columns_it_put_on_a_grid(tmp_path):
    """One line names the columns whose values between grid points score as off the grid
    (three or more levels on one step: a grid; two levels are not)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=400), "count": rng.poisson(3, 400),
                          "halves": rng.integers(0, 6, 400) * 0.5, "pair": rng.choice([0, 2], 400)})
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "BENTOML_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(path),
                             "--name", "cli-grid", "--max-epochs", "1", "--target-fpr", "0.05"],
                            env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "columns on a grid: count (step 1), halves (step 0.5)\n" in result.stderr
