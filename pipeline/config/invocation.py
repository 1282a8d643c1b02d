"""What one command gives a stage besides its configuration: every stage is `run(cfg, args)`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ) -> "DistInfo":
        """torchrun's contract is its environment; the CLI reads it once and passes this down."""
        return cls(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0)))


@dataclass(frozen=True)
class StageArgs:
    dist: DistInfo = DistInfo()  # this process's place in a torchrun job
    sub: str | None = None  # score, lb add: a submission CSV (default: the newest)
    out: str | None = None  # export: the bundle folder
    public: str | None = None  # lb add: the public leaderboard score
    replace: bool = False  # lb add: replace a recorded public score
    k: int = 2  # pick: how many final submissions
    words: tuple[str, ...] = ()  # bare words: `lb add <file>`, `export half`
