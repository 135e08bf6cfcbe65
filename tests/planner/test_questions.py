"""The questions a capacity planner is bought for, on the CLI (issue 12): --min gpus under a time or
cost bound, --max micro_batch / seq_len / model, cost in every report, and the line that says when
the global batch caps scaling."""
import json

import pytest
from click.testing import CliRunner

from planner.capacity.advice import batch_limit
from planner.capacity.budget import plan_budget
from planner.capacity.whatif import edit
from planner.report import column, money, sig
from planner.search.engine import search
from planner.spec.loading import load_spec
from pretrain.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_min_gpus_in_30_days_names_the_count_the_plan_and_what_binds():
    """How long it takes is measured in bench/plan_speed.py (issue 12's bound was 2 s), not
    asserted here."""
    out = run("specs/70b_on_512xH100.yaml", "--min", "gpus", "--days", "30")
    assert out.exit_code == 0, out.output
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines()[1:])
    assert lines["question"] == "fewest GPUs to train 2e+12 tokens in at most 30 days"
    assert lines["answer"].startswith("1,728 (216 node(s) x 8 GPUs)")
    assert lines["plan"].startswith("dp")
    days = float(lines["speed"].split("; ")[1].split(" days")[0])
    assert days <= 30
    assert "> 30" in lines["binding"]
    assert "$" in lines["cost"] and "catalog default" in lines["cost"]


def test_min_gpus_json_agrees_with_the_text():
    out = run("specs/70b_on_512xH100.yaml", "--min", "gpus", "--days", "30", "--json")
    answer = json.loads(out.stdout)
    assert answer["value"] == 1728 and answer["plan"]["gpus"] == 1728
    assert answer["plan"]["days_to_train"] <= 30
    assert answer["plan"]["cost_usd"] == pytest.approx(answer["plan"]["gpu_hours"] * 2.99)


def test_progress_is_silent_for_a_second_then_reports(capsys, monkeypatch):
    from pretrain.cli import Progress
    with Progress("sweep of cluster.nodes") as progress:
        progress(1, 4)  # within the first second: nothing
        progress.start -= 5.0
        progress(2, 4)
    err = capsys.readouterr().err
    assert err == "sweep of cluster.nodes: 2/4 in 5.0 s, about 5 s left\n"


def test_a_cost_bound_is_met_and_the_next_smaller_count_breaks_it_or_has_no_plan():
    spec = load_spec("specs/7b_on_64xA100.yaml")
    out = run("specs/7b_on_64xA100.yaml", "--min", "gpus", "--budget-usd", "250000", "--json")
    answer = json.loads(out.stdout)
    assert answer["plan"]["cost_usd"] <= 250000
    assert spec.cluster.price[0] == answer["plan"]["price_per_gpu_hour"]


def test_max_model_is_budget_modes_pick():
    spec = load_spec("specs/budget_64xA100_30days.yaml")
    out = json.loads(run("specs/budget_64xA100_30days.yaml", "--max", "model", "--json").stdout)
    assert out["value"] == plan_budget(spec).pick.params
    days = json.loads(run("specs/7b_on_64xA100.yaml", "--max", "model", "--days", "30",
                          "--json").stdout)
    assert days["value"] == out["value"]  # the same cluster and 30 days: the same answer


def test_max_seq_len_and_micro_batch_answer_with_a_binding():
    seq = run("specs/1.1b_on_1xH200.yaml", "--max", "seq_len")
    assert seq.exit_code == 0 and "re-planned at each length" in seq.stdout
    mb = run("specs/7b_on_64xA100.yaml", "--max", "micro_batch")
    assert "answer   1" in mb.stdout and "binding  memory at" in mb.stdout


@pytest.mark.parametrize("args, message", [
    (["--max", "model", "--min", "gpus"], "--max and --min ask different questions"),
    (["--days", "3"], "--days and --budget-usd bound a question"),
    (["--max", "micro_batch", "--days", "3"], "not --max micro_batch"),
    (["--min", "gpus", "--sweep", "cluster.nodes=1,2"], "does not combine"),
    (["--max", "model", "--days", "3", "--budget-usd", "5"], "one budget"),
])
def test_questions_that_ask_two_things_are_usage_errors(args, message):
    out = run("specs/7b_on_64xA100.yaml", *args)
    assert out.exit_code == 2 and message in out.stderr


def test_max_model_without_a_budget_names_the_field():
    out = run("specs/7b_on_64xA100.yaml", "--max", "model")
    assert out.exit_code == 1
    assert out.stderr.startswith("error: training.budget: --max model needs a budget")


def test_a_cost_question_without_a_price_names_the_field():
    out = run("specs/tiny_cpu.yaml", "--min", "gpus", "--budget-usd", "10")
    assert out.exit_code == 1 and out.stderr.startswith("error: cluster.price_per_gpu_hour:")


def test_the_report_and_json_carry_gpu_hours_and_cost():
    spec = load_spec("specs/7b_on_64xA100.yaml")
    best = search(spec).best
    report = json.loads(run("specs/7b_on_64xA100.yaml", "--json").stdout)
    hours = 2e12 / best.tokens_per_s / 3600 * 64
    assert report["best"]["gpu_hours"] == pytest.approx(hours)
    assert report["best"]["cost_usd"] == pytest.approx(hours * 1.5)
    assert report["best"]["price_source"].startswith("catalog default")
    own = json.loads(run("specs/7b_on_64xA100.yaml", "--json", "--set",
                         "cluster.price_per_gpu_hour=2").stdout)
    assert own["best"]["cost_usd"] == pytest.approx(hours * 2)
    assert own["best"]["price_source"] == "cluster.price_per_gpu_hour"
    text = run("specs/7b_on_64xA100.yaml").stdout
    assert "cost       " in text and "GPU-hours" in text and "$1.50/GPU-hour" in text


def test_sweep_rows_have_gpus_gpu_hours_and_cost_and_say_when_the_batch_caps_scaling():
    out = run("specs/7b_on_64xA100.yaml", "--sweep", "cluster.nodes=8,64,256")
    header = out.stdout.splitlines()[0].split()
    assert header[:2] == ["cluster.nodes", "GPUs"] and "GPU-h" in header and "cost" in header
    assert "2,048" in out.stdout.splitlines()[4]
    assert "from cluster.nodes=64 on, the global batch (1,024 sequences) leaves one " \
           "micro-batch per data-parallel rank" in out.stdout
    rows = json.loads(run("specs/7b_on_64xA100.yaml", "--sweep", "cluster.nodes=8,64",
                          "--json").stdout)["rows"]
    assert [r["gpus"] for r in rows] == [64, 512]
    assert all(r["cost_usd"] == pytest.approx(r["gpu_hours"] * 1.5) for r in rows)


def test_batch_limit_names_a_batch_that_raises_mfu():
    spec = edit(load_spec("specs/7b_on_64xA100.yaml"), {"cluster.nodes": 256})
    result = search(spec)
    limit = batch_limit(result)
    assert limit is not None and limit.per_rank == 2 and limit.better_sequences > 1024
    bigger = edit(spec, {"training.global_batch_tokens": limit.better_sequences * 4096})
    assert search(bigger).best.mfu == pytest.approx(limit.better_mfu)
    assert limit.better_mfu >= 1.1 * result.best.mfu
    assert "the global batch limits scaling" in run("specs/7b_on_64xA100.yaml", "--set",
                                                    "cluster.nodes=256").stdout
    assert batch_limit(search(load_spec("specs/7b_on_64xA100.yaml"))) is None


def test_columns_keep_one_precision_and_numbers_keep_three_figures():
    assert column([17.81, 0.8214, 0.001944]) == ["17.8", "0.8", "0.0"]
    assert column([0.2092, 0.0013]) == ["0.209", "0.001"]
    assert [sig(v) for v in (153.2, 17.81, 2.5, 0.00118)] == ["153", "17.8", "2.50", "0.00118"]
    assert [money(v) for v in (950, 12_345, 434_000, 4.14e6)] == ["$950", "$12.3K", "$434K",
                                                                  "$4.14M"]


def test_memory_table_adds_up():
    """allocated + fragmentation = reserved; + context = required; capacity - headroom =
    usable; usable - required = free: each line of the printed table, to its rounding."""
    text = run("specs/7b_on_64xA100.yaml").stdout
    table = text.split("per-GPU memory")[1].split("verdict:")[0]
    rows = {line.rsplit(None, 1)[0].strip(): float(line.rsplit(None, 1)[1])
            for line in table.splitlines()[2:] if line.strip()}
    get = lambda prefix: next(v for k, v in rows.items() if k.startswith(prefix))  # noqa: E731
    assert get("= reserved") == pytest.approx(get("= peak") + get("+ allocator"), abs=0.011)
    assert get("= required") == pytest.approx(get("= reserved") + get("+ CUDA"), abs=0.011)
    assert get("= usable") == pytest.approx(get("capacity") - get("- headroom"), abs=0.011)
    assert get("free") == pytest.approx(get("= usable") - get("= required"), abs=0.011)


def test_every_peak_moment_the_report_can_name_is_in_the_docs():
    """The memory model's moments (planner/backends/deepspeed/memory.py) are the rows of the
    table in docs/memory-model.md, so a name in a report is one a user can look up."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    code = (root / "planner/backends/deepspeed/memory.py").read_text()
    names = set(re.findall(r'moment="([^"]+)"', code)) | set(
        re.findall(r'\("((?:forward|backward) through the loss)"', code))
    documented = set(re.findall(r"^\| ([a-z][^|]*?) \|", (root / "docs/memory-model.md")
                                .read_text(), re.M))
    assert len(names) >= 6 and names <= documented, names - documented


def test_a_vocabulary_smaller_than_tp_costs_no_0_by_0_division():
    """Budget mode over a 2-token vocabulary: shards of less than a row are rounded up."""
    import warnings

    from planner.spec.loading import spec_from_dict
    spec = spec_from_dict({"model": {"preset": "llama2-7b", "vocab_size": 2},
                           "cluster": {"gpu": "A100", "nodes": 1},
                           "training": {"budget": {"days": 1}, "global_batch_sequences": 64}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan_budget(spec).pick is not None


def test_a_law_beyond_any_float_is_a_note_when_the_tokens_are_given(tmp_path):
    """The plan does not depend on the law: its compute-optimal tokens become 'no number' with
    a warning, and the report still prints (with tokens: chinchilla the law decides the tokens,
    so that spec is an error naming training.scaling_law: tests/planner/test_bad_input.py)."""
    spec = tmp_path / "law.yaml"
    spec.write_text("model: llama2-7b\ncluster: {gpu: A100, nodes: 8}\ntraining: {tokens: 2.0e12, "
                    "global_batch_sequences: 1024, scaling_law: {E: 1.7, A: 400, B: 400, "
                    "alpha: 9.0, beta: 0.001}}\n")
    out = run(str(spec))
    assert out.exit_code == 0
    assert "(compute-optimal for this model: no number)" in out.stdout
    assert "warning: outside the law's range: custom gives e^" in out.stdout
    report = json.loads(run(str(spec), "--json").stdout)
    assert report["scaling"]["compute_optimal_tokens"] is None


def test_questions_stay_bounded_for_huge_batches(monkeypatch):
    """A global batch of 10^9 sequences: the micro-batch candidates stop at the spec's ceiling,
    only a few dozen of them are estimated (the rest are only checked against the rules), and
    the sequence lengths are the multiples up to the cap, not the batch's divisors.  The work is
    counted, not timed."""
    from planner.capacity import inverse
    from planner.spec.spec import MAX_MICRO_BATCH
    asked = []
    solve = inverse._solve

    def spy(question, var, usable):
        asked.append(var)
        return solve(question, var, usable)
    monkeypatch.setattr(inverse, "_solve", spy)
    spec = edit(load_spec("specs/125m_on_1xH100.yaml"),
                {"training.global_batch_tokens": 10**9 * 1024})
    answer = inverse.largest_micro_batch(spec)
    assert answer.value is not None and answer.value <= MAX_MICRO_BATCH
    (var,) = asked
    assert len(var.values) == MAX_MICRO_BATCH  # not 10^9
    assert 0 < len(var.points) <= 2 * inverse.CHECK_ABOVE  # memory estimates made
    tokens = edit(spec, {"training.global_batch_tokens": 2**40})
    values = inverse.seq_len_values(tokens, 128, 2**20)
    assert values == [2**k for k in range(7, 21)]  # the multiples of 128 that divide 2^40


def test_the_plan_report_of_a_budget_spec_is_a_clear_error():
    from planner.errors import PlannerError
    from planner.report import to_text
    spec = load_spec("specs/budget_64xA100_30days.yaml")
    with pytest.raises(PlannerError, match="needs training.tokens"):
        to_text(search(spec), [])


def test_the_report_says_when_the_logits_dominate_and_what_cuts_them():
    """GPT-2 124M on one H100 at micro-batch 8: three fp32 logits-sized tensors are most of the
    peak; the note quotes the fused loss's own estimate on the same plan."""
    from planner.capacity.advice import logits_note
    from planner.estimate.predict import estimate
    spec = load_spec("specs/125m_on_1xH100.yaml")
    result = search(spec)
    note = logits_note(result)
    best = result.best
    assert best.memory.logits_loss >= 0.2 * best.memory.total
    fused = estimate(edit(spec, {"model.fused_loss": True}), best.plan, with_time=False)
    assert f"keeps {fused.memory.logits_loss / 2**30:.1f} GiB" in note
    assert "vocab-parallel" not in note  # one GPU: no tensor parallelism to offer
    assert "note       the logits and loss take" in run("specs/125m_on_1xH100.yaml").stdout
    assert logits_note(search(load_spec("specs/70b_on_512xH100.yaml"))) is None
