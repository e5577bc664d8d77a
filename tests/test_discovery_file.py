"""The file `UrlSource` (`--workers-file`, `--routers-file`): what `ecoserve up --autoscale` rewrites as it scales."""

from __future__ import annotations

import asyncio

import pytest

from ecoserve.cli.main import main
from ecoserve.router.discovery import file_urls, read_url_file, write_url_file

A, B, C = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


def test_urls_one_per_line_or_comma_separated(tmp_path):
    path = tmp_path / "urls"
    path.write_text(f" {A},{B}\n\n{C} ,\n")
    assert read_url_file(path) == [A, B, C]


def test_write_replaces_the_file_whole_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "urls"
    write_url_file(path, [A, B])
    write_url_file(path, [C])
    assert path.read_text() == f"{C}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["urls"]


def test_the_list_at_once_then_every_change_and_nothing_else(tmp_path):
    path = tmp_path / "urls"
    write_url_file(path, [A, B])

    async def follow() -> None:
        updates = file_urls(path, poll_interval=0.01)()
        assert await anext(updates) == [A, B]
        following = asyncio.ensure_future(anext(updates))
        path.write_text(f"{A},{B}\n")  # the same list written another way: not a change
        await asyncio.sleep(0.1)
        path.unlink()  # unreadable for a while: the last set stands
        await asyncio.sleep(0.1)
        assert not following.done()
        write_url_file(path, [B, C])
        assert await asyncio.wait_for(following, 10) == [B, C]
        write_url_file(path, [])  # emptied after the start: followed, the supervisor's file is the truth
        assert await asyncio.wait_for(anext(updates), 10) == []
        await updates.aclose()

    asyncio.run(follow())


def test_a_missing_or_empty_file_is_an_error_at_once(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_urls(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n , \n")
    with pytest.raises(ValueError, match="no URLs"):
        file_urls(tmp_path / "empty")


@pytest.mark.parametrize(("command", "flag"), [("router", "--workers-file"), ("gateway", "--routers-file")])
def test_the_commands_name_the_flag_of_a_bad_file(tmp_path, command, flag):
    (tmp_path / "empty").write_text("")
    for path, problem in ((tmp_path / "missing", "No such file"), (tmp_path / "empty", "no URLs")):
        with pytest.raises(SystemExit) as exc:
            main([command, flag, str(path)])
        assert str(exc.value.code).startswith(f"ecoserve {command}: {flag}: ") and problem in str(exc.value.code)


def test_a_file_and_a_list_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["router", "--workers", A, "--workers-file", str(tmp_path / "urls")])
    assert exc.value.code == 2 and "not allowed with argument --workers" in capsys.readouterr().err
