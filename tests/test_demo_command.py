"""``ner demo``'s arguments and what it hands Streamlit and the page (no server started)."""
import argparse
import os

import pytest

from ner.app import command
from ner.cli import main


def parse(*argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--host", "--port", "--db", "--pipeline"))


def streamlit_settings(*argv) -> dict:
    options = command.streamlit_options(parse(*argv))
    return dict(zip(options[::2], options[1::2]))


def test_localhost_unless_told_otherwise():
    settings = streamlit_settings()
    assert settings["--server.address"] == "127.0.0.1" and settings["--server.port"] == "8501"
    assert settings["--server.headless"] == "true" and settings["--browser.gatherUsageStats"] == "false"
    assert streamlit_settings("--host", "0.0.0.0", "--port", "9000")["--server.address"] == "0.0.0.0"
    assert command.PAGE.is_file()


def test_pipelines_and_database_reach_the_page(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    environment = command.demo_environment(parse("--pipeline", "en", "--pipeline", "tiny", "--db", "a.sqlite"))
    assert environment == {"NER_DEMO_DB": str(tmp_path / "a.sqlite"),
                           "NER_DEMO_PIPELINES": os.pathsep.join(["en", str(tmp_path / "tiny")])}
    assert command.demo_environment(parse())["NER_DEMO_PIPELINES"].split(os.pathsep)[0] == "en"  # the shipped list


def test_a_wrong_pipeline_or_folder_stops_before_streamlit(tmp_path, capsys):
    assert main(["demo", "--pipeline", "nonexistent"]) == 2
    assert "ner demo: no pipeline 'nonexistent'" in capsys.readouterr().err
    assert main(["demo", "--db", str(tmp_path / "missing" / "a.sqlite")]) == 2
    assert "no folder" in capsys.readouterr().err
