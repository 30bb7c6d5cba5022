"""curves.png in a run directory: the training loss and the validation / test metrics per epoch, drawn from
the run's summary (retrieval: HR@10 and NDCG@10; ranking: AUC and NE per task). Needs matplotlib (extra
`viz`); without it the run says so once and goes on."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

from genrec.checkpoint import atomic_write_bytes


def write_curves(path: Path, losses: list[tuple[int, float]], validation: dict[str, list[tuple[int, float]]],
                 test: dict[str, float], test_epoch: int, log: Callable[[str], None]) -> bool:
    """losses: (epoch, loss); validation: metric -> (epoch, value); test: metric -> value of the weights of
    `test_epoch` (the selected one in validated mode). Returns whether the picture was written."""
    try:
        import matplotlib
    except ImportError:
        log(f"{path.name} not drawn: pip install 'genrec[viz]' for matplotlib")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if losses:
        left.plot(*zip(*losses), marker=".", color="#2b6cb0")
    left.set(title="training loss", xlabel="epoch", ylabel="loss")
    for index, (name, points) in enumerate(sorted(validation.items())):
        color = f"C{index}"
        if points:
            right.plot(*zip(*points), marker=".", color=color, label=f"valid {name}")
        if name in test:
            right.scatter([test_epoch], [test[name]], marker="*", s=120, color=color, label=f"test {name}")
    for index, name in enumerate(sorted(set(test) - set(validation)), start=len(validation)):
        right.scatter([test_epoch], [test[name]], marker="*", s=120, color=f"C{index}", label=f"test {name}")
    right.set(title="evaluation", xlabel="epoch")
    right.legend(fontsize=7)
    figure.tight_layout()
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, picture.getvalue())
    return True
