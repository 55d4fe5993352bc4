"""Configuration dataclasses: plain dicts in checkpoints and YAML files, strict on unknown keys."""

import dataclasses

from asrkd.errors import UserError


class DictConfig:
    """Mixin for a ``@dataclass``: ``to_dict()`` and a ``from_dict()`` that names unknown keys
    (a typo in a YAML file is an error, not a silently ignored setting)."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**d)
