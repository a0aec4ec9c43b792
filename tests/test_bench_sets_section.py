"""bench.compare's real-network sets section (bench/sets.py): it runs only when named, reports
each set's summary per batch size, and a set whose answers are wrong is an error row, not a
figure."""

from bench import compare, markdown, sets
from bench.context import Context, Options
from bench.suite import resolve_options


class Bar:
    def update(self, n):
        pass

    def set_description(self, text):
        pass


def context(backends):
    opts = resolve_options(Options(backends=backends, sections=("sets",), peers=False))
    return Context(opts=opts, backends=backends, bar=Bar())


def test_it_runs_only_when_named():
    assert "sets" not in resolve_options(Options(full=True)).sections
    assert "sets" not in compare.sections_option(compare.parse_args(["--sections", "all"]).sections)
    assert compare.sections_option(["sets"]) == ("sets",)


def test_each_set_reports_its_batches_and_a_wrong_answer_is_an_error(monkeypatch):
    calls = []

    def fake_rows(name, batch_sizes, backends, repeat):
        calls.append((name, tuple(batch_sizes), backends))
        if name == "vgg16":
            raise RuntimeError("vgg16 mb8: wrong answers from numba on mb8ic64ih224")
        return [
            {"set": name, "mb": mb, "impl": impl, "geomean_vs_torch": 0.9, "max_vs_torch": 1.4,
             "network_seconds": 0.5}
            for mb in batch_sizes for impl in (*backends, "torch")
        ]  # fmt: skip

    monkeypatch.setattr(sets, "compare_rows", fake_rows)
    result = sets.run(context(["naive", "im2col", "numba"]))
    assert [c[0] for c in calls] == list(sets.SETS)
    assert all(c[1] == (8, 1) and c[2] == ("im2col", "numba") for c in calls)
    status = {r["set"]: r["status"] for r in result["rows"]}
    assert status["resnet50"] == "ok" and "wrong answers from numba" in status["vgg16"]
    text = markdown.sets_section({"sets": result})
    assert "| resnet50 | mb8 |" in text and "| resnet50 | mb1 |" in text
    assert "wrong answers from numba" in text
