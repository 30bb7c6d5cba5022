"""The seconds-long configuration (tiny.toml) shared by training tests."""

from pathlib import Path

from genrec.config import Config, load_config_file

TINY = Path(__file__).resolve().parent / "tiny.toml"


def tiny_config(mode: str = "validated", epochs: int = 2) -> Config:
    config = load_config_file(TINY, Config())
    config.data.mode = mode
    config.train.epochs = epochs
    config.train.device = "cpu"
    return config
