"""The bearer-token file both CLIs read."""

from __future__ import annotations

import pytest

from splitdet.common.token_file import TokenFileError, read_token


def test_token_is_stripped(tmp_path):
    (tmp_path / "t").write_text("  s3cret\n")
    assert read_token(tmp_path / "t") == "s3cret"


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read the token file"):
        read_token(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenFileError, match="is empty"):
        read_token(tmp_path / "empty")
