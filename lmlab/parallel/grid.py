"""The 3D rank grid: data x pipeline x tensor parallel (lesson 12, ``lessons/12_parallelism``).

``world_size = dp * pp * tp`` ranks are laid out with tensor parallelism fastest (neighbouring
ranks share a node and its fast links, where TP's per-layer all-reduces need them), then pipeline,
then data::

    rank = (d * pp + p) * tp + t        coordinates (d, p, t)

Each rank belongs to one group per dimension: the ranks that differ from it only in that
coordinate. ``tp`` groups all-reduce activations, ``pp`` groups pass activations along, ``dp``
groups average gradients. BLOOM: ``RankGrid(dp=8, pp=12, tp=4)`` on 384 GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.argcheck import check_choice, check_int
from lmlab.parallel import comm

__all__ = ["RankGrid", "DIMS"]

DIMS = ("dp", "pp", "tp")


@dataclass(frozen=True)
class RankGrid:
    """A (dp, pp, tp) grid of ranks. Pure arithmetic; :meth:`make_groups` creates the process groups."""

    dp: int = 1
    pp: int = 1
    tp: int = 1
    world_size: int | None = None

    def __post_init__(self):
        for name in DIMS:
            check_int(getattr(self, name), name, "RankGrid:")
        if self.world_size is not None and self.dp * self.pp * self.tp != self.world_size:
            raise ValueError(f"RankGrid: dp x pp x tp must equal world_size, got "
                             f"{self.dp} x {self.pp} x {self.tp} = {self.dp * self.pp * self.tp} != {self.world_size}")

    @property
    def size(self) -> int:
        return self.dp * self.pp * self.tp

    def coords(self, rank: int) -> dict[str, int]:
        """``rank -> {"dp": d, "pp": p, "tp": t}``."""
        check_int(rank, "rank", "RankGrid.coords:", minimum=0, maximum=self.size - 1)
        return {"dp": rank // (self.pp * self.tp), "pp": rank // self.tp % self.pp, "tp": rank % self.tp}

    def rank(self, dp: int = 0, pp: int = 0, tp: int = 0) -> int:
        """``(d, p, t) -> rank``."""
        for name, v in (("dp", dp), ("pp", pp), ("tp", tp)):
            check_int(v, name, "RankGrid.rank:", minimum=0, maximum=getattr(self, name) - 1)
        return (dp * self.pp + pp) * self.tp + tp

    def groups(self, dim: str) -> list[list[int]]:
        """All groups along ``dim``: each holds the ranks that differ only in that coordinate."""
        check_choice(dim, "dim", DIMS, "RankGrid.groups:")
        out: dict[tuple, list[int]] = {}
        for r in range(self.size):
            c = self.coords(r)
            key = tuple(c[d] for d in DIMS if d != dim)
            out.setdefault(key, []).append(r)
        return list(out.values())

    def group_of(self, rank: int, dim: str) -> list[int]:
        """The ranks in ``rank``'s group along ``dim`` (in coordinate order)."""
        return next(g for g in self.groups(dim) if rank in g)

    def table(self) -> str:
        """A printable map: rank -> (dp, pp, tp) and its three groups."""
        lines = [f"{'rank':>4}  {'dp':>2} {'pp':>2} {'tp':>2}   dp group      pp group      tp group"]
        for r in range(self.size):
            c = self.coords(r)
            gs = "  ".join(f"{str(self.group_of(r, d)):<12}" for d in DIMS)
            lines.append(f"{r:>4}  {c['dp']:>2} {c['pp']:>2} {c['tp']:>2}   {gs}".rstrip())
        return "\n".join(lines)

    def make_groups(self) -> dict[str, object]:
        """Create every process group (all ranks must call this, in the same order) and return
        this rank's group for each dimension: ``{"dp": group, "pp": group, "tp": group}``."""
        if comm.world_size() != self.size:
            raise ValueError(f"RankGrid.make_groups: dp x pp x tp = {self.size} must equal the world size {comm.world_size()}")
        me = comm.rank()
        mine = {}
        for dim in DIMS:
            for ranks in self.groups(dim):
                g = comm.new_group(ranks)
                if me in ranks:
                    mine[dim] = g
        return mine
