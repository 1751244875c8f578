"""How orthogonal Newton-Schulz's output is, per coefficient schedule and number of steps.

Every schedule costs the same per iteration (three matmuls: ``A = X X^T``, ``A^2``, ``B X``), so
steps are cost. For each schedule and step count, the same fp32 matrices (several shapes, two
spectra, a few seeds) are orthogonalised and scored by

- ``||O O^T - I||_F / sqrt(k)`` on the smaller side ``k`` (the RMS deviation of the Gram matrix
  from the identity: 0 for an exactly semi-orthogonal ``O``);
- the share of singular values of ``O`` within ``1 +- 0.1``.

Spectra: ``gaussian`` (i.i.d. entries: the bulk is well spread, the smallest singular values of
a square matrix are tiny) and ``decaying`` (``U diag(s) V^T``, ``s`` log-spaced from 1 to 1e-3:
a low-effective-rank matrix, like a momentum buffer).

    python -m experiments.ns_orthogonality                        # print the table
    python -m experiments.ns_orthogonality --write docs/results.md
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from assocmem.optim.newton_schulz import zeropower_via_newtonschulz5
from experiments.cli_files import output_path
from experiments.report import refuse_unreplaceable, replace_section

SHAPES = ((64, 64), (256, 64), (64, 256), (256, 256))
SPECTRA = ("gaussian", "decaying")
# (label, coefficients, lower, steps)
SCHEDULES = (
    *(("jordan", "jordan", 1e-3, n) for n in (3, 4, 5, 6)),
    *(("polar_express", "polar_express", 1e-3, n) for n in (3, 4, 5)),
    *(("polar_express lower=1e-2", "polar_express", 1e-2, n) for n in (3, 4)),
)


def matrix(shape: tuple[int, int], spectrum: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows, cols = shape
    if spectrum == "gaussian":
        return torch.randn(rows, cols, generator=gen)
    k = min(rows, cols)
    U = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64)).Q
    s = torch.logspace(0, -3, k, dtype=torch.float64)
    return (U @ torch.diag(s) @ V.T).float()


def scores(O: torch.Tensor) -> tuple[float, float]:
    """``(||O O^T - I||_F / sqrt(k), share of singular values in 1 +- 0.1)``, in fp64."""
    O = O.double()
    gram = O @ O.T if O.shape[0] <= O.shape[1] else O.T @ O
    k = gram.shape[0]
    error = torch.linalg.matrix_norm(gram - torch.eye(k, dtype=gram.dtype)) / k**0.5
    sv = torch.linalg.svdvals(O)
    return float(error), float(((sv - 1).abs() <= 0.1).double().mean())


def _cell(values: list[float], digits: int = 3) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def run(shapes=SHAPES, seeds: int = 3, schedules=SCHEDULES) -> str:
    inputs = {
        spectrum: [matrix(shape, spectrum, seed) for shape in shapes for seed in range(seeds)]
        for spectrum in SPECTRA
    }
    header = ["schedule", "steps", "matmuls"]
    for spectrum in SPECTRA:
        header += [f"{spectrum}: ‖OOᵀ−I‖_F/√k", f"{spectrum}: σ in 1±0.1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, coefficients, lower, steps in schedules:
        row = [label, str(steps), str(3 * steps)]
        for spectrum in SPECTRA:
            measured = [
                scores(
                    zeropower_via_newtonschulz5(G, steps, coefficients=coefficients, lower=lower)
                )
                for G in inputs[spectrum]
            ]
            row += [_cell([m[0] for m in measured]), _cell([m[1] for m in measured], 2)]
        lines.append("| " + " | ".join(row) + " |")
    n = len(shapes) * seeds
    note = (
        f"fp32, shapes {', '.join(f'{r}×{c}' for r, c in shapes)}, {seeds} seeds each: "
        f"mean ± std over the {n} matrices per spectrum."
    )
    return note + "\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--write", type=output_path, help="markdown file whose section to refresh")
    args = parser.parse_args()
    refuse_unreplaceable(parser, args.write, "ns-orthogonality")
    if args.seeds < 2:  # each cell is a mean and a spread over seeds
        parser.error(f"--seeds must be at least 2, got {args.seeds}")
    torch.set_num_threads(1)  # deterministic and light; the sizes are small
    table = run(seeds=args.seeds)
    print(table)
    if args.write:
        command = "python -m experiments.ns_orthogonality " + " ".join(sys.argv[1:])
        body = f"## Newton–Schulz orthogonality\n\nCommand: `{command.strip()}`. {table}"
        replace_section(args.write, "ns-orthogonality", body)


if __name__ == "__main__":
    main()
