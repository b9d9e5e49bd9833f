"""The settings file: flags > environment > file > defaults, and every bad key or value
refused at start with a message naming it and where it came from."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from corral import settings as settings_module
from corral.settings import ControllerSettings, HandlerSettings, SettingsError, load_settings
from tests.cluster import REPO


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("CORRAL_"):
            monkeypatch.delenv(key)
    # No /etc/corral/*.yaml of this machine may leak in.
    monkeypatch.setattr(settings_module, "default_config_path", lambda daemon: tmp_path / f"absent-{daemon}.yaml")


def write(tmp_path, text: str, name: str = "controller.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_flag_beats_environment_beats_file(tmp_path, monkeypatch):
    path = write(tmp_path, "listen: 127.0.0.1:1\netcd_prefix: /file/\nleader-lease-seconds: 7\n")
    monkeypatch.setenv("CORRAL_LISTEN", "127.0.0.1:2")
    monkeypatch.setenv("CORRAL_ETCD_PREFIX", "/env/")
    settings = load_settings(ControllerSettings, {"listen": "127.0.0.1:3"}, config=str(path), daemon="controller")
    assert settings.listen == "127.0.0.1:3"           # flag
    assert settings.etcd_prefix == "/env/"            # environment over file
    assert settings.leader_lease_seconds == 7         # file (dashes allowed) over default
    assert settings.resync_seconds == ControllerSettings.model_fields["resync_seconds"].default  # default


def test_file_from_corral_config_and_lists_as_yaml(tmp_path, monkeypatch):
    path = write(tmp_path, "etcd_endpoints: [http://10.0.0.1:2379, http://10.0.0.2:2379]\n"
                           "node_labels: {zone: a}\nservers: 10.0.0.5:7100,10.0.0.6:7100\n", "handler.yaml")
    monkeypatch.setenv("CORRAL_CONFIG", str(path))
    settings = load_settings(HandlerSettings, {}, daemon="handler")
    assert settings.etcd_endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert settings.node_labels == {"zone": "a"}
    assert settings.servers == ["10.0.0.5:7100", "10.0.0.6:7100"]


def test_toml_file(tmp_path):
    path = write(tmp_path, 'listen = "127.0.0.1:9"\nleader_lease_seconds = 4\n', "controller.toml")
    settings = load_settings(ControllerSettings, {}, config=str(path), daemon="controller")
    assert (settings.listen, settings.leader_lease_seconds) == ("127.0.0.1:9", 4)


def test_default_file_is_used_when_present(tmp_path, monkeypatch):
    path = write(tmp_path, "listen: 127.0.0.1:5\n")
    monkeypatch.setattr(settings_module, "default_config_path", lambda daemon: path)
    assert load_settings(ControllerSettings, {}, daemon="controller").listen == "127.0.0.1:5"


def controller_file_error(tmp_path, text: str):
    """The file written and the SettingsError message loading the controller with it gives."""
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(ControllerSettings, {}, config=str(path), daemon="controller")
    return path, str(caught.value)


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path, message = controller_file_error(tmp_path, "listen: 127.0.0.1:1\nlisten_adress: x\ncolour: blue\n")
    assert f"{path}: unknown setting 'listen_adress' (did you mean 'listen'?)" in message
    assert f"{path}: unknown setting 'colour'" in message


def test_a_handler_key_is_unknown_to_the_controller(tmp_path):
    assert "unknown setting 'node_name'" in controller_file_error(tmp_path, "node_name: n1\n")[1]


def test_bad_value_names_the_key_and_the_file(tmp_path):
    path, message = controller_file_error(tmp_path, "leader_lease_seconds: 1\netcd_prefix: corral\n")
    assert f"leader_lease_seconds (from {path}, key 'leader_lease_seconds'): " in message
    assert f"etcd_prefix (from {path}, key 'etcd_prefix'): etcd_prefix must start and end with '/'" in message


def test_bad_value_names_the_environment_or_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_HEARTBEAT_SECONDS", "often")
    with pytest.raises(SettingsError) as caught:
        load_settings(HandlerSettings, {"emulation": "maybe"}, daemon="handler")
    message = str(caught.value)
    assert "heartbeat_seconds (from environment CORRAL_HEARTBEAT_SECONDS): " in message
    assert "'often'" in message
    assert "emulation (from flag --emulation): emulation must be auto, on or off (got 'maybe')" in message


@pytest.mark.parametrize("text,needle", [
    ("listen: [unclosed\n", "is not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_malformed_file(tmp_path, text, needle):
    assert needle in controller_file_error(tmp_path, text)[1]


def test_empty_file_means_defaults(tmp_path):
    path = write(tmp_path, "# nothing set\n")
    assert load_settings(ControllerSettings, {}, config=str(path), daemon="controller").listen == "127.0.0.1:7100"


def test_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "nowhere.yaml"))
    with pytest.raises(SettingsError, match=f"settings file {tmp_path / 'nowhere.yaml'} does not exist"):
        load_settings(ControllerSettings, {}, daemon="controller")


@pytest.mark.parametrize("module", ["controller.main", "handler.main"])
def test_daemons_take_config_and_refuse_a_missing_or_bad_file(tmp_path, module):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    missing = subprocess.run([sys.executable, "-m", module, "--config", str(tmp_path / "none.yaml")],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2
    assert f"settings file {tmp_path / 'none.yaml'} does not exist" in missing.stderr
    bad = write(tmp_path, "etcd_endpoints: no-port-here\n")
    result = subprocess.run([sys.executable, "-m", module, "--config", str(bad)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "invalid settings" in result.stderr
    assert f"etcd_endpoints (from {bad}, key 'etcd_endpoints')" in result.stderr
