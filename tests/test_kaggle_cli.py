"""comp.kaggle_cli with the real `kaggle` CLI (kaggle 2.x) against the fake of Kaggle's API
(tests/fake_kaggle.py): each HTTP answer's kind as the CLI prints it, the poll's back-off through 404, 429
and 5xx up to its deadline and never past it, a refusal ending it at once, and the logged-in user read
from the CLI whichever way it logged in. No test sleeps: the poll's clock is a kaggle_env.Clock."""

from __future__ import annotations

import json

import pytest
from fake_kaggle import USER
from submit import kaggle_env
from submit.kaggle_env import CLI

from comp import kaggle_cli
from comp.errors import UserError
from comp.kaggle_cli import KaggleError

pytestmark = pytest.mark.skipif(not CLI.is_file(), reason="the kaggle CLI is not installed beside the interpreter")
fake, api, clock = kaggle_env.fake, kaggle_env.api, kaggle_env.clock  # the fixtures
DATASET = f"{USER}/polled"
STATUS = ["datasets", "status", DATASET]


def _ready(out: str) -> str | None:
    return "ready" if "ready" in out else None


@pytest.fixture
def dataset(fake, api):
    fake.datasets[DATASET] = {"versions": [{}], "body": {}}
    yield DATASET
    del fake.datasets[DATASET]


@pytest.mark.parametrize("code, kind", [(400, "refused"), (401, "refused"), (403, "refused"), (404, "missing"),
                                        (429, "busy"), (500, "busy"), (503, "busy")])
def test_each_http_answer_has_its_kind_as_the_real_cli_prints_it(code, kind, fake, dataset):
    fake.fail("GetDatasetStatus", code)
    with pytest.raises(KaggleError, match=f"^kaggle datasets status {DATASET} failed: ") as e:
        kaggle_cli.run(STATUS)
    assert e.value.kind == kind, e.value.answer
    assert kaggle_cli.run(STATUS).strip() == "ready"  # the fault answered once


def test_a_poll_looks_again_after_404_429_and_5xx_with_a_capped_exponential_back_off(fake, dataset, clock,
                                                                                      monkeypatch):
    monkeypatch.setattr(kaggle_cli, "BACKOFF_CAP_S", 10.0)
    fake.fail("GetDatasetStatus", 404, 429, 503, 500, 404)
    assert kaggle_cli.poll(STATUS, _ready, 600, 1.0, "dataset") == "ready"
    assert clock.sleeps == [2.0, 4.0, 8.0, 10.0, 10.0]  # poll_s doubled per failure in a row, capped
    assert len(fake.calls("GetDatasetStatus")) == 6


def test_a_not_yet_answer_waits_poll_s_and_resets_the_back_off(fake, dataset, clock, monkeypatch):
    answers = iter(["pending", "pending", "ready"])
    fake.fail("GetDatasetStatus", 503, 503)
    assert kaggle_cli.poll(STATUS, lambda out: _ready(next(answers)), 600, 3.0, "dataset") == "ready"
    assert clock.sleeps == [6.0, 12.0, 3.0, 3.0]


def test_a_poll_gives_up_at_its_deadline_with_a_last_look_there(fake, dataset, clock):
    fake.fail("GetDatasetStatus", *[503] * 20)
    assert kaggle_cli.poll(STATUS, _ready, 7.0, 1.0, "dataset") is None
    assert clock.sleeps == [2.0, 4.0, 1.0] and clock.now == 7.0  # never past the deadline
    assert len(fake.calls("GetDatasetStatus")) == 4


@pytest.mark.parametrize("code, says", [(400, "Bad Request"), (401, "kaggle auth login"), (403, "rules")])
def test_a_refusal_ends_a_poll_at_once_naming_the_command(code, says, fake, dataset, clock):
    fake.fail("GetDatasetStatus", 404, code)
    with pytest.raises(KaggleError, match=f"kaggle datasets status {DATASET} failed: .*{says}"):
        kaggle_cli.poll(STATUS, _ready, 600, 1.0, "dataset")
    assert clock.sleeps == [2.0]  # the 404 before it only


def test_a_missing_dataset_is_final_where_missing_is_an_answer(fake, api, clock):
    fake.fail("GetDatasetStatus", 503)
    with pytest.raises(KaggleError) as e:
        kaggle_cli.poll(["datasets", "status", f"{USER}/absent"], _ready, 600, 1.0, "dataset", retry=("busy",))
    assert e.value.kind == "missing" and clock.sleeps == [2.0]


@pytest.mark.parametrize("login", kaggle_env.LOGINS)
def test_the_logged_in_user_is_read_from_the_cli_whichever_login(login, fake, tmp_path, monkeypatch):
    kaggle_env.use_real_cli(fake, tmp_path / "home", monkeypatch, login=login)
    assert kaggle_cli.username() == USER


def test_no_login_is_one_line_with_the_clis_instructions(fake, tmp_path, monkeypatch):
    kaggle_env.use_real_cli(fake, tmp_path / "home", monkeypatch, login="key-env")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(UserError, match="kaggle config view failed: .*kaggle auth login"):
        kaggle_cli.username()


def test_an_expired_auth_login_is_renewed_by_the_cli(fake, tmp_path, monkeypatch):
    kaggle_env.use_real_cli(fake, tmp_path / "home", monkeypatch, login="auth-login")
    creds = tmp_path / "home" / ".kaggle" / "credentials.json"
    saved = json.loads(creds.read_text())
    creds.write_text(json.dumps({**saved, "access_token_expiration": "2020-01-01T00:00:00+00:00"}))
    assert kaggle_cli.username() == USER
    assert len(fake.calls("GenerateAccessToken")) == 1  # kagglesdk kaggle_creds.py refresh_access_token
    assert json.loads(creds.read_text())["access_token"] != saved["access_token"]
