"""report.md with its plots, and `llm compare` on eval results (and on cost reports, as before)."""

import json
from dataclasses import dataclass, field


from llm.cli.main import main
from llm.eval.report import compare_results_table, write_report
from llm.eval.results import TaskResult, results_document, write_results
from llm.finetune.cost import compare_table, write_cost


@dataclass
class Scores:  # the TaskScores contract
    metrics: dict
    higher_is_better: dict
    samples: list = field(default_factory=list)


HIB = {"acc": True, "acc_norm": True, "word_perplexity": False, "bits_per_byte": False}


def _doc(acc=0.75, ppl=12.5, perturb=False):
    mc = {"acc,none": acc, "acc_stderr,none": 0.05, "acc_norm,none": 0.5, "acc_norm_stderr,none": 0.04}
    ppl_m = {"word_perplexity,none": ppl, "word_perplexity_stderr,none": "N/A", "bits_per_byte,none": 1.25, "bits_per_byte_stderr,none": "N/A"}
    results = [TaskResult("mc", Scores(mc, {k: HIB[k] for k in ("acc", "acc_norm")}), {"task": "mc"}, "Yaml", 0, 20, 20, 1.0),
               TaskResult("ppl", Scores(ppl_m, {k: HIB[k] for k in ("word_perplexity", "bits_per_byte")}), {"task": "ppl"}, "Yaml", 0, 5, 5, 2.0)]
    if perturb:
        noisy = dict(mc, **{"acc,none": acc - 0.25})
        results.append(TaskResult("mc@typo", Scores(noisy, results[0].scores.higher_is_better), {"task": "mc"}, "Yaml", 0, 20, 20, 1.0,
                                  perturbation="typo", clean_metrics=mc))
    return results_document(results, model_source="llm", model_args={"source": "runs/sft"}), {r.name: r for r in results if r.perturbation}


def _png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn


def test_report_with_robustness_table_and_plots(tmp_path):
    doc, perturbed = _doc(perturb=True)
    path = write_report(doc, tmp_path, perturbed=perturbed)
    text = path.read_text()
    assert path == tmp_path / "report.md" and "`runs/sft`" in text
    assert "|mc     |Yaml   |none  |     0|acc            |↑  | 0.7500|±  |0.0500|" in text
    assert "|Task|Perturbation|   Metric    |Clean |Perturbed| Drop |Drop %|" in text
    assert "|mc  |typo        |acc,none     |0.7500|   0.5000|0.2500|  33.3|" in text
    assert "|mc  |typo        |acc_norm,none|0.5000|   0.5000|0.0000|   0.0|" in text
    assert "![metrics](metrics.png)" in text and "![robustness](robustness.png)" in text
    _png(tmp_path / "metrics.png")
    _png(tmp_path / "robustness.png")
    # the same robustness rows from the document alone (its `robustness` section)
    assert write_report(doc, tmp_path / "again").read_text() == text


def test_report_without_perturbation_has_no_robustness(tmp_path):
    doc, _ = _doc()
    text = write_report(doc, tmp_path).read_text()
    assert "## Metrics" in text and "Robustness" not in text and not (tmp_path / "robustness.png").exists()
    _png(tmp_path / "metrics.png")


def test_compare_results_table_side_by_side():
    a, _ = _doc()
    b, _ = _doc(acc=0.8, ppl=10.0)
    lines = compare_results_table(["base", "sft"], [a, b]).splitlines()
    assert lines[:2] == ["|Tasks|Filter|n-shot|    Metric     |   |     base      |           sft           |",
                         "|-----|------|-----:|---------------|---|--------------:|------------------------:|"]
    assert lines[2] == "|mc   |none  |     0|acc            |↑  |0.7500 ± 0.0500|0.8000 ± 0.0500 (+0.0500)|"
    assert lines[5] == "|     |none  |     0|word_perplexity|↓  |        12.5000|        10.0000 (-2.5000)|"  # stderr N/A: none shown
    del b["results"]["ppl"]
    assert compare_results_table(["base", "sft"], [a, b]).splitlines()[5] == "|     |none  |     0|word_perplexity|↓  |        12.5000|                        -|"


def test_cli_compare_eval_results_and_cost_reports(tmp_path, capsys):
    a, _ = _doc()
    b, _ = _doc(acc=0.8)
    write_results(a, tmp_path / "base" / "eval" / "results.json")  # a workdir whose eval/ holds the results
    write_results(b, tmp_path / "sft.json")  # a results file
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "sft.json"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == compare_results_table(["base", "sft"], [a, b])  # runs named by workdir / file stem
    saved = json.loads(out.read_text())
    assert saved[str(tmp_path / "sft.json")]["eval"]["mc"]["acc,none"] == 0.8
    assert saved[str(tmp_path / "base")]["eval"]["ppl"]["word_perplexity_stderr,none"] == "N/A"

    # cost reports alone: the table and JSON as before
    full = {"method": "full", "trainable_params": 1_000_000, "tokens_per_s": 1000.0, "eval_loss": 2.0}
    lora = dict(full, method="lora r8", trainable_params=20_000)
    for name, report in (("full", full), ("lora", lora)):
        (tmp_path / name).mkdir()
        write_cost(tmp_path / name, report)
    assert main(["compare", str(tmp_path / "full"), str(tmp_path / "lora"), "--json", str(out)]) == 0
    assert capsys.readouterr().out == compare_table(["full", "lora"], [full, lora]) + "\n"
    assert json.loads(out.read_text()) == {str(tmp_path / "full"): full, str(tmp_path / "lora"): lora}

    # a workdir with both: its cost row and its eval column
    write_results(b, tmp_path / "lora" / "eval" / "results.json")
    assert main(["compare", str(tmp_path / "full"), str(tmp_path / "lora"), str(tmp_path / "base")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(compare_table(["full", "lora"], [full, lora]) + "\n\n")
    assert printed.endswith(compare_results_table(["lora", "base"], [b, a]))


def test_cli_compare_path_without_results_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty' has neither cost.json nor results.json" in err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["compare", str(tmp_path / "bad.json")]) == 2
    assert "no 'results' section" in capsys.readouterr().err
