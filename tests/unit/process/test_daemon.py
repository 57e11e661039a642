"""The config holder's reload (the daemon's process-wide parts run in the
integration tests)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from spfmilter.config import loading
from spfmilter.config.loading import load_config
from spfmilter.core.metrics import Metrics
from spfmilter.process.daemon import ConfigHolder


def test_a_reload_reads_the_public_suffix_list_again_or_keeps_the_old_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spfmilter.cfg"
    path.write_text("[rescue]\ndkim = yes\n")
    config = load_config(path)
    assert config.suffixes is not None and config.suffixes.loaded
    metrics = Metrics()
    holder = ConfigHolder(config, str(path), None, metrics)
    path.write_text("[rescue]\ndkim = yes\narc_trusted_sealers = lists.example.org\n")
    assert holder.reload()
    assert holder.config.rescue.arc_trusted_sealers == ("lists.example.org",)
    assert holder.config.suffixes is not None and holder.config.suffixes is not config.suffixes
    kept = holder.config
    monkeypatch.setattr(loading, "PUBLIC_SUFFIX_LIST", str(tmp_path / "gone.dat"))
    path.write_text("[rescue]\ndkim = no\narc_trusted_sealers = lists.example.org\n")
    with caplog.at_level(logging.ERROR):
        assert not holder.reload()
    assert holder.config is kept
    assert "reload failed, keeping the previous configuration" in caplog.text
    assert "[rescue]: cannot read the public suffix list" in caplog.text
    assert metrics.value("spfmilter_config_reloads_total", outcome="failed") == 1
