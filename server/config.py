"""Settings from the environment: one dataclass, validated at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    # Storage: MongoDB when mongodb_uri is set, else the embedded engine in data_dir.
    data_dir: Path = Path("./data")
    mongodb_uri: str | None = None
    mongodb_db: str = "planbro"
    # The public base URL of the FHIR endpoint (used in links and Location headers);
    # None: derived from each request.
    base_url: str | None = None
    max_body_bytes: int = 5 * 1024 * 1024
    # The longest request target (path and query) and request header field (name, ": ",
    # value) answered; longer ones get 414 / 431 (an _id list of a few hundred ids fits).
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 8 * 1024
    default_count: int = 20
    max_count: int = 1000
    demo: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded_path(self) -> Path:
        return self.data_dir / "planbro.db"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Config:
        env = dict(os.environ if env is None else env)
        cfg = cls(
            data_dir=Path(env.get("PLANBRO_DATA", "./data")),
            mongodb_uri=env.get("MONGODB_URI") or None,
            mongodb_db=env.get("MONGODB_DB", "planbro"),
            base_url=env.get("PLANBRO_BASE_URL") or None,
            max_body_bytes=int(env.get("PLANBRO_MAX_BODY_BYTES", 5 * 1024 * 1024)),
            max_url_bytes=int(env.get("PLANBRO_MAX_URL_BYTES", 8 * 1024)),
            max_header_bytes=int(env.get("PLANBRO_MAX_HEADER_BYTES", 8 * 1024)),
            demo=env.get("PLANBRO_DEMO", "") in ("1", "true", "yes"),
        )
        cfg = replace(cfg, **overrides)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name, value in (("PLANBRO_MAX_BODY_BYTES", self.max_body_bytes),
                            ("PLANBRO_MAX_URL_BYTES", self.max_url_bytes),
                            ("PLANBRO_MAX_HEADER_BYTES", self.max_header_bytes)):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if not 1 <= self.default_count <= self.max_count:
            raise ValueError("default_count must be between 1 and max_count")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("PLANBRO_BASE_URL must be an http(s) URL")
