"""Hub entries fetched into models/<key> at the pinned revision; load(key) then reads the folder."""

import json

import pytest

from srclib import paths
from srclib.models import MODELS
from srclib.models import __main__ as cli
from srclib.models.fetch import fetch

HUB_KEYS = [k for k, a in MODELS.items() if a.source and a.revision]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision, local_dir):
        calls.append((repo_id, revision))
        (tmp_path / "hub-ok").write_text("1")
        with open(f"{local_dir}/config.json", "w") as f:
            json.dump({"repo": repo_id}, f)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    return calls


@pytest.mark.parametrize("key", HUB_KEYS)
def test_fetch_pins_the_revision_and_load_prefers_the_folder(fake_hub, tmp_path, key):
    adapter = MODELS[key]
    assert adapter.default_source() == adapter.source  # nothing fetched: the hub id
    out = fetch(adapter)
    assert out == tmp_path / "models" / key
    assert fake_hub == [(adapter.source, adapter.revision)]
    marker = json.loads((out / "srclib_model.json").read_text())
    assert marker == {"key": key, "source": adapter.source, "revision": adapter.revision, "fetched": True}
    assert adapter.default_source() == out


def test_a_folder_at_another_revision_is_not_used(fake_hub, tmp_path):
    adapter = MODELS[HUB_KEYS[0]]
    out = fetch(adapter)
    marker = out / "srclib_model.json"
    marker.write_text(marker.read_text().replace(adapter.revision, "0" * 40))
    assert adapter.default_source() == adapter.source


def test_cli_names_an_unknown_key_and_refuses_local_only_entries(fake_hub):
    assert cli.main(["fetch", "no-such-model"]) == 2
    with pytest.raises(ValueError, match="tiny-dlm.*no hub id"):
        fetch(MODELS["tiny-dlm"])
    assert fake_hub == []
