"""etc/dragonflow.ini.sample is what oslo-config-generator makes of the options today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_is_current(tmp_path: Path) -> None:
    out = tmp_path / "sample.ini"
    gen = Path(sys.executable).parent / "oslo-config-generator"
    subprocess.run([str(gen), "--namespace", "dragonflow", "--output-file", str(out)],
                   check=True)
    assert out.read_text() == (ROOT / "etc/dragonflow.ini.sample").read_text(), \
        "regenerate: .venv/bin/oslo-config-generator --namespace dragonflow " \
        "--output-file etc/dragonflow.ini.sample"
