"""The node's configuration: defaults, file + variables, and one clear line per mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli.main import main
from dicom_node.config.settings import SETTINGS, load_config
from dicom_node.config.values import DimsePeer, StowDestination
from dicom_node.errors import ConfigError


def mistakes(environ: dict, path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    return caught.value.messages


def test_defaults_run_the_node_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {})
    assert config.data_dir == tmp_path / "spine-node-data"
    assert config.database_url == f"sqlite:///{tmp_path / 'spine-node-data' / 'spine-node.db'}"
    assert (config.ae_title, config.port, config.allowed_aes, config.destinations) == ("SPINENODE", 11112, (), ())
    assert (config.model, config.device, config.stable_age, config.workers) == ("spine-phantom-demo", "auto", 30, 1)
    assert (config.dask_scheduler, config.seg_type, config.step_size, config.mirroring) == (None, "binary", 0.5,
                                                                                             False)
    assert config.min_slices == 20 and config.retry_max_s == 300 and not config.tls_enabled
    assert any("back to no one" in w for w in config.warnings)


def test_variables_override_the_file_and_file_paths_are_relative_to_it(tmp_path):
    (tmp_path / "etc").mkdir()
    file = tmp_path / "etc" / "node.toml"
    file.write_text('data_dir = "../data"\nae_title = "FROMFILE"\nport = 4000\nallowed_aes = ["ORTHANC", "PACS"]\n'
                    'stable_age = 12.5\nmirroring = true\n[peers]\nORTHANC = "127.0.0.1:4242"\nPACS = "pacs:104"\n')
    config = load_config(file, {"SPINE_NODE_PORT": "5000", "SPINE_NODE_DEVICE": "cuda:1", "SPINE_NODE_WORKERS": "2"})
    assert config.data_dir == tmp_path / "data" and config.source == file
    assert (config.ae_title, config.port, config.device, config.workers) == ("FROMFILE", 5000, "cuda:1", 2)
    assert config.allowed_aes == ("ORTHANC", "PACS") and config.stable_age == 12.5 and config.mirroring is True
    assert config.peers["PACS"] == DimsePeer("PACS", "pacs", 104)
    assert config.destinations_for("ORTHANC") == ["ORTHANC@127.0.0.1:4242"]
    assert config.destinations_for("STRANGER") == []


def test_the_file_can_come_from_spine_node_config(tmp_path):
    file = tmp_path / "node.toml"
    file.write_text('ae_title = "VIAENV"\n')
    assert load_config(None, {"SPINE_NODE_CONFIG": str(file)}).ae_title == "VIAENV"


def test_destinations_take_dimse_and_stow_and_override_the_caller(tmp_path):
    config = load_config(None, {"SPINE_NODE_DESTINATIONS": "PACS@10.0.0.5:104, stow:http://orthanc:8042/dicom-web/",
                                "SPINE_NODE_PEERS": "ORTHANC@127.0.0.1:4242",
                                "SPINE_NODE_DATA_DIR": str(tmp_path)})
    assert config.destinations == (DimsePeer("PACS", "10.0.0.5", 104), StowDestination("http://orthanc:8042/dicom-web"))
    assert config.destinations_for("ORTHANC") == ["PACS@10.0.0.5:104", "stow:http://orthanc:8042/dicom-web"]
    assert config.database_url == f"sqlite:///{tmp_path / 'spine-node.db'}"


def test_empty_variables_mean_accept_any_and_embedded(tmp_path):
    file = tmp_path / "node.toml"
    file.write_text('allowed_aes = "PACS"\ndask_scheduler = "tcp://10.0.0.9:8786"\n[peers]\nPACS = "pacs:104"\n')
    config = load_config(file, {"SPINE_NODE_ALLOWED_AES": "", "SPINE_NODE_DASK_SCHEDULER": "",
                                "SPINE_NODE_DATABASE_URL": ""})
    assert config.allowed_aes == () and config.dask_scheduler is None and config.database_url.startswith("sqlite:")
    assert load_config(None, {"SPINE_NODE_DASK_SCHEDULER": "10.0.0.9:8786"}).dask_scheduler == "tcp://10.0.0.9:8786"


@pytest.mark.parametrize("name, value, message", [
    ("PORT", "abc", "SPINE_NODE_PORT: 'abc' is not a port number (1-65535)"),
    ("PORT", "70000", "SPINE_NODE_PORT: '70000' is not a port number (1-65535)"),
    ("AE_TITLE", "MUCH_TOO_LONG_TITLE", "SPINE_NODE_AE_TITLE: 'MUCH_TOO_LONG_TITLE' is not an AE title"),
    ("AE_TITLE", "BAD\\AE", "SPINE_NODE_AE_TITLE: 'BAD\\\\AE' is not an AE title"),
    ("ALLOWED_AES", "OK,THIS_ONE_IS_TOO_LONG", "SPINE_NODE_ALLOWED_AES: 'THIS_ONE_IS_TOO_LONG' is not an AE title"),
    ("DESTINATIONS", "PACS@host", "SPINE_NODE_DESTINATIONS: 'PACS@host' is not AE@host:port"),
    ("DESTINATIONS", "pacs:104", "SPINE_NODE_DESTINATIONS: 'pacs:104' is not AE@host:port"),
    ("DESTINATIONS", "PACS@h:0", "SPINE_NODE_DESTINATIONS: 'PACS@h:0' is not AE@host:port"),
    ("DESTINATIONS", "stow:ftp://x/dicom-web", "SPINE_NODE_DESTINATIONS: 'stow:ftp://x/dicom-web' is not stow:http(s)://host:port/path"),
    ("PEERS", "ORTHANC=127.0.0.1:4242", "SPINE_NODE_PEERS: 'ORTHANC=127.0.0.1:4242' is not AE@host:port"),
    ("STABLE_AGE", "-1", "SPINE_NODE_STABLE_AGE: '-1' is not a number of seconds above 0"),
    ("STABLE_AGE", "soon", "SPINE_NODE_STABLE_AGE: 'soon' is not a number of seconds above 0"),
    ("MIN_SLICES", "0", "SPINE_NODE_MIN_SLICES: '0' is not a number of slices (1 or more)"),
    ("MODEL", " ", "SPINE_NODE_MODEL: ' ' is not a model bundle name or folder"),
    ("DEVICE", "gpu", "SPINE_NODE_DEVICE: 'gpu' is not a device (auto, cpu, cuda or cuda:N)"),
    ("STEP_SIZE", "1.5", "SPINE_NODE_STEP_SIZE: '1.5' is not a step size in (0, 1]"),
    ("STEP_SIZE", "0", "SPINE_NODE_STEP_SIZE: '0' is not a step size in (0, 1]"),
    ("MIRRORING", "maybe", "SPINE_NODE_MIRRORING: 'maybe' is not a boolean"),
    ("SEG_TYPE", "fractional", "SPINE_NODE_SEG_TYPE: 'fractional' is not one of binary, labelmap"),
    ("DASK_SCHEDULER", "tcp://nohost", "SPINE_NODE_DASK_SCHEDULER: 'tcp://nohost' is not a Dask scheduler address"),
    ("WORKERS", "0", "SPINE_NODE_WORKERS: '0' is not a number of workers (1-64)"),
    ("RETRY_MAX_S", "0", "SPINE_NODE_RETRY_MAX_S: '0' is not a number of seconds above 0"),
    ("TLS_CERT", "/no/such/cert.pem", "SPINE_NODE_TLS_CERT: '/no/such/cert.pem' is not a file"),
    ("DATABASE_URL", "mysql://user:secret@db/node", "SPINE_NODE_DATABASE_URL: 'mysql://user:***@db/node': only"),
    ("DATABASE_URL", "not a url", "SPINE_NODE_DATABASE_URL: 'not a url' is not a database URL"),
    ("PROT", "11112", "SPINE_NODE_PROT: not a setting of the node (did you mean SPINE_NODE_PORT?)"),
])
def test_each_mistake_is_one_line_naming_the_variable(name, value, message):
    [line] = [m for m in mistakes({f"SPINE_NODE_{name}": value}) if not m.startswith("SPINE_NODE_PEERS: no host")]
    assert line.startswith(message) and "\n" not in line
    assert "secret" not in line


def test_every_mistake_is_reported_at_once(capsys):
    environ = {"SPINE_NODE_PORT": "abc", "SPINE_NODE_DEVICE": "tpu", "SPINE_NODE_WORKERS": "many"}
    assert len(mistakes(environ)) == 3
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environ.items():
            patch.setenv(name, value)
        assert main(["jobs", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spine-node: error: 3 configuration mistakes:")
    assert "  SPINE_NODE_PORT: 'abc' is not a port number (1-65535)\n" in err


def test_file_mistakes_name_the_file_and_the_key(tmp_path):
    file = tmp_path / "node.toml"
    file.write_text('prot = 4000\nport = "x"\nstep_size = 0.5\n[peers]\nPACS = 104\n')
    found = mistakes({}, file)
    assert f"{file}: unknown key 'prot' (did you mean port?)" in found
    assert f"{file}: port: 'x' is not a port number (1-65535)" in found
    assert f"{file}: peers: peer 'PACS': 104 is not \"host:port\"" in found


def test_unreadable_files_are_one_line_mistakes(tmp_path):
    assert mistakes({}, tmp_path / "absent.toml") == [f"{tmp_path / 'absent.toml'}: the configuration file does not exist"]
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1\n")
    [line] = mistakes({}, bad)
    assert line.startswith(f"{bad}: not valid TOML") and "\n" not in line


def test_settings_that_go_together(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    assert mistakes({"SPINE_NODE_TLS_CERT": str(cert)}) == [
        "SPINE_NODE_TLS_CERT and SPINE_NODE_TLS_KEY go together: give both or neither"]
    assert any(m.startswith("SPINE_NODE_TLS_CA needs") for m in mistakes({"SPINE_NODE_TLS_CA": str(cert)}))
    config = load_config(None, {"SPINE_NODE_TLS_CERT": str(cert), "SPINE_NODE_TLS_KEY": str(cert)})
    assert config.tls_enabled and config.tls_key == cert


def test_allowed_callers_need_an_address_when_results_go_back_to_them():
    [line] = mistakes({"SPINE_NODE_ALLOWED_AES": "ORTHANC,PACS", "SPINE_NODE_PEERS": "PACS@pacs:104"})
    assert line.startswith("SPINE_NODE_PEERS: no host:port for calling AE(s) ORTHANC;")
    load_config(None, {"SPINE_NODE_ALLOWED_AES": "ORTHANC", "SPINE_NODE_DESTINATIONS": "PACS@pacs:104"})


def test_data_dir_that_is_a_file_is_a_mistake(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert mistakes({"SPINE_NODE_DATA_DIR": str(afile)}) == [f"SPINE_NODE_DATA_DIR: '{afile}' exists and is not a folder"]


def test_unrelated_variables_are_warnings_not_mistakes():
    config = load_config(None, {"SPINE_NODE_SOMETHING_ELSE": "1", "SPINE_NODE_LOG_LEVEL": "debug",
                                "SPINE_NODE_MODELS_DIR": "/models"})
    assert any(w.startswith("SPINE_NODE_SOMETHING_ELSE: not a setting") for w in config.warnings)
    assert not any("MODELS_DIR" in w for w in config.warnings)


def test_every_setting_is_documented_in_the_module():
    import dicom_node.config.settings as module

    for setting in SETTINGS:
        assert setting.variable in module.__doc__, setting.variable


def test_installed_models_are_looked_up_in_the_data_dir_of_the_file(tmp_path):
    config_file = tmp_path / "node.toml"
    config_file.write_text('data_dir = "state"\ndestinations = ["PACS@127.0.0.1:104"]\n')
    options = load_config(config_file, {}).pipeline_options()
    assert Path(options.models_dir) == tmp_path / "state" / "models"
    moved = load_config(config_file, {"SPINE_NODE_MODELS_DIR": str(tmp_path / "elsewhere")}).pipeline_options()
    assert Path(moved.models_dir) == tmp_path / "elsewhere"


def test_lesion_thresholds_come_from_a_table_or_a_json_variable(tmp_path):
    config_file = tmp_path / "node.toml"
    config_file.write_text('destinations = ["PACS@127.0.0.1:104"]\n[lesion_thresholds]\nmin_focus_mm3 = 40.0\n')
    assert load_config(config_file, {}).pipeline_options().lesion_thresholds == {"min_focus_mm3": 40.0}
    from_variable = load_config(config_file, {"SPINE_NODE_LESION_THRESHOLDS": '{"min_focus_mm3": 55}'})
    assert from_variable.pipeline_options().lesion_thresholds == {"min_focus_mm3": 55}
    json_file = tmp_path / "thresholds.json"
    json_file.write_text('{"min_focus_mm3": 70}')
    from_path = load_config(None, {"SPINE_NODE_LESION_THRESHOLDS": str(json_file)})
    assert from_path.pipeline_options().lesion_thresholds == {"min_focus_mm3": 70}


def test_unknown_lesion_threshold_is_a_one_line_mistake():
    (line,) = mistakes({"SPINE_NODE_LESION_THRESHOLDS": '{"min_focus": 5}'})
    assert line.startswith("SPINE_NODE_LESION_THRESHOLDS:") and "min_focus" in line and "\n" not in line


def test_node_and_process_take_their_pipeline_defaults_from_one_place():
    from pipelines.options import PipelineOptions
    from dicom_node.cli.main import build_parser

    node = load_config(None, {}).pipeline_options()
    args = build_parser().parse_args(["process", "in", "--out", "out"])
    cli = PipelineOptions(model=args.model, device=args.device, step_size=args.step_size, mirroring=args.mirroring,
                          seg_type=args.seg_type, min_slices=args.min_slices)
    assert node.parameters() == cli.parameters() == PipelineOptions().parameters()


@pytest.mark.parametrize("text", ["PACS@[::1]:104", "tls:PACS@[fe80::1]:2762", "PACS@10.0.0.5:104", "PACS@pacs.local:11112"])
def test_a_destination_written_back_reads_the_same_ipv6_hosts_in_brackets(text):
    from dicom_node.config.values import destination

    peer = destination(text)
    assert str(peer) == text
    assert destination(str(peer)) == peer
