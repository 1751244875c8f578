from experiments import ns_orthogonality
from experiments.report import replace_section, section


def test_table_ranks_schedules_and_writes_its_section(tmp_path):
    schedules = (("jordan", "jordan", 1e-3, 5), ("polar_express", "polar_express", 1e-3, 5))
    table = ns_orthogonality.run(shapes=((16, 8), (8, 24)), seeds=2, schedules=schedules)
    rows = [line for line in table.splitlines() if line.startswith("| jordan") or
            line.startswith("| polar_express")]  # fmt: skip
    assert len(rows) == 2
    # on a decaying spectrum down to 1e-3 Polar Express's 5 steps are closer to orthogonal
    # than Jordan's (its band [0.86, 1.14] vs [0.47, 1.20] from 1e-3: docs/theory/muon.md)
    error = {row.split("|")[1].strip(): float(row.split("|")[6].split("±")[0]) for row in rows}
    assert error["polar_express"] < error["jordan"]
    markdown = tmp_path / "results.md"
    markdown.write_text("# Results\n")
    replace_section(markdown, "ns-orthogonality", table)
    assert "polar_express" in section(markdown, "ns-orthogonality")


def test_scores_of_an_orthogonal_matrix():
    import torch

    Q = torch.linalg.qr(torch.randn(6, 4)).Q
    error, share = ns_orthogonality.scores(Q)
    assert error < 1e-5 and share == 1.0
    error, share = ns_orthogonality.scores(2 * Q)  # all singular values 2: Gram 4 I
    assert abs(error - 3.0) < 1e-5 and share == 0.0
