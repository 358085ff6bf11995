"""The paper's roadmap: its worked figures reproduced, each branch of the recommendation, and the
price file's validation. Expected values come from the paper's tables (configs/paper_figures.toml)
and the raw price file read with tomllib, never from the advisor itself."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from shardrun.advice.roadmap import AdviceInput, BuyOption, RentOption, advise, parse_duration_hours
from shardrun.config.job import GB, RunConfig
from shardrun.errors import ConfigError
from shardrun.config.platforms import ModelThroughput, Platform, Profile, load_platforms, load_profile
from shardrun.config.prices import load_prices, parse_prices

from tests.price_files import MINIMAL

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER = tomllib.loads((CONFIGS / "paper_figures.toml").read_text())
PRICE_TEXT = (CONFIGS / "prices.toml").read_text()
PRICE_DOC = tomllib.loads(PRICE_TEXT)
PRICES = load_prices()
PLATFORMS = load_platforms()
LOCAL = PLATFORMS["local"]
RESERVE = 512_000_000


def paper_seconds(table: str, device: str) -> float:
    rows = [r for r in PAPER["tables"][table]["rows"] if device in r["device"]]
    assert len(rows) == 1, (table, device)
    return rows[0]["seconds"]


def raw_speed(gpu: str, model: str) -> float:
    """A GPU's speed for a model, read straight from the price file as docs/advice.md defines it."""
    table = PRICE_DOC["gpus"][gpu]
    if "speed" in table:
        return table["speed"].get(model.split("-")[0], table["speed"]["default"])
    reference = PRICE_DOC["gpus"][PRICE_DOC["speed"]["reference"]]
    return table["fp32_tflops"] / reference["fp32_tflops"]


# The paper's runs: patches of 32 at batch 64, 16 patches per image; the profile's patches/s is
# chosen so that one epoch takes exactly the paper's time on its device.
PATCHES_PER_IMAGE, BATCH = 16, 64


def steps_per_epoch(images: int) -> int:
    return math.ceil(images * PATCHES_PER_IMAGE / BATCH)


def paper_profile(device: str, model: str, images: int, epoch_seconds: float) -> Profile:
    pps = steps_per_epoch(images) * BATCH / epoch_seconds
    return Profile(f"paper-{model}", device, "Temiz, Bilge, Uygur 2019", {model: ModelThroughput(pps, 32)})


def run(model="decusr", epochs=1, **changes) -> RunConfig:
    values = dict(name=f"{model}-run", model=model, scale=2, channels=3, epochs=epochs, batch_size=BATCH,
                  patch_size=32, patches_per_image=PATCHES_PER_IMAGE)
    values.update(changes)
    return RunConfig(**values)


COLAB_2019 = Platform("colab-2019", "Colab with a Tesla K80, as the paper used it", 12, 20, 10, "paper-k80",
                      "Temiz, Bilge, Uygur 2019", "")


def k80_input(runs, images, epoch_seconds, model="decusr", dataset_bytes=1 * GB, accounts=1, workers=1,
              deadline=None) -> AdviceInput:
    profile = paper_profile("NVIDIA Tesla K80 (Colab)", model, images, epoch_seconds)
    return AdviceInput("paper", tuple(runs), images, dataset_bytes, accounts, RESERVE, workers, profile,
                       COLAB_2019, profile, LOCAL, deadline)


T4 = load_profile("colab-t4")


def t4_input(runs, images=50_000, dataset_bytes=5 * GB, accounts=2, workers=1, deadline=None) -> AdviceInput:
    return AdviceInput("job", tuple(runs), images, dataset_bytes, accounts, RESERVE, workers, T4,
                       PLATFORMS["colab-free"], T4, LOCAL, deadline)


def t4_train_hours(r: RunConfig, images: int) -> float:
    pps = T4.models[r.model].at_patch_size(r.patch_size)
    return steps_per_epoch(images) * r.epochs * r.batch_size / pps / 3600


def rent_cost(offer: dict, train_hours_on_t4: float, model: str, runs: int = 1) -> float:
    """Independent cost of renting: hours on the offer's GPU plus each run's start-up, times the price."""
    hours = train_hours_on_t4 * raw_speed("T4", model) / raw_speed(offer["gpu"], model)
    return (hours + runs * LOCAL.startup_minutes / 60) * offer["usd_per_hour"]


# -- the paper's own figures ---------------------------------------------------------------------


def test_about_8_epochs_of_the_imagenet_job_fit_in_12_hours_on_a_k80():
    table = PAPER["tables"]["imagenet"]
    k80 = paper_seconds("imagenet", "K80")
    job = run(epochs=8, options={"blocks": table["options"]["blocks"]})
    advice = advise(k80_input([job], table["images"], k80, dataset_bytes=int(table["dataset_gb"] * GB)), PRICES)

    free = advice.free.runs[0]
    assert free.epoch_hours == pytest.approx(k80 / 3600)  # 1.52 h
    assert free.epochs_per_session == pytest.approx(12 * 3600 / k80)  # 12 h / 1.52 h ~ 7.9
    assert round(free.epochs_per_session) == 8
    assert free.epochs_per_usable_session == pytest.approx(COLAB_2019.usable_seconds / k80)
    assert advice.free.accounts_needed == 1  # 5.58 GB fits one 15 GB Drive
    assert advice.recommendation.kind == "free"


def test_an_epoch_on_the_papers_other_devices_follows_from_the_k80_and_the_speed_factors():
    for table, model in (("ultrasound", "fsrcnn"), ("imagenet", "decusr")):
        images = PAPER["tables"][table]["images"]
        advice = advise(k80_input([run(model)], images, paper_seconds(table, "K80"), model=model), PRICES)
        hours = {g.gpu: g.hours for g in advice.work.hours_by_gpu}
        assert hours["K80"] == pytest.approx(paper_seconds(table, "K80") / 3600)
        assert hours["GTX 1050Ti"] == pytest.approx(paper_seconds(table, "1050Ti") / 3600, rel=1e-5)
        assert hours["GTX 960M"] == pytest.approx(paper_seconds(table, "960m") / 3600, rel=1e-5)
    # Table 1 alone measured the CPU: 8.85 h for the 500 ultrasound images.
    assert hours.get("i7-6700HQ")  # listed for the decusr job too, at its default speed
    ultrasound = advise(k80_input([run("fsrcnn")], 500, paper_seconds("ultrasound", "K80"), model="fsrcnn"), PRICES)
    cpu = next(g for g in ultrasound.work.hours_by_gpu if g.gpu == "i7-6700HQ")
    assert cpu.hours == pytest.approx(paper_seconds("ultrasound", "i7-6700HQ") / 3600, rel=1e-5)


def test_renting_costs_hours_on_the_gpu_times_its_price_for_every_offer():
    k80 = paper_seconds("imagenet", "K80")
    advice = advise(k80_input([run(epochs=8)], 50_000, k80), PRICES)
    train_k80 = 8 * k80 / 3600
    costs = {(r.provider, r.gpu, r.date): r for r in advice.rent}
    for offer in PRICE_DOC["rent"]:
        hours = train_k80 * raw_speed("K80", "decusr") / raw_speed(offer["gpu"], "decusr")
        expected = (hours + LOCAL.startup_minutes / 60) * offer["usd_per_hour"]
        assert costs[(offer["provider"], offer["gpu"], offer["date"])].cost_usd == pytest.approx(expected)
    # The paper's cheapest offer: eight epochs on Google's K80 at 0.135 $/h.
    google_k80 = costs[("Google", "K80", "2019")]
    assert google_k80.cost_usd == pytest.approx((8 * 1.52 + 2 / 60) * 0.135, rel=1e-3)
    assert google_k80.historical


# -- the roadmap's branches ----------------------------------------------------------------------


def test_a_job_that_fits_in_free_sessions_and_the_team_storage_is_advised_free():
    job = run(epochs=200, channels=1)
    advice = advise(t4_input([job], accounts=2, workers=2), PRICES)
    assert advice.free.fits and advice.free.pieces_fit and advice.free.storage_fits
    sessions = math.ceil(t4_train_hours(job, 50_000) * 3600 / PLATFORMS["colab-free"].usable_seconds)
    assert advice.free.sessions == sessions > 1
    assert advice.recommendation.kind == "free" and advice.recommendation.cost_usd == 0


def cheapest(options: list[RentOption | BuyOption], deadline: float | None = None):
    meeting = [o for o in options if deadline is None or o.calendar_hours <= deadline]
    return min(meeting, key=lambda o: o.cost_usd)


def test_data_too_big_for_the_teams_free_accounts_is_advised_to_rent_or_buy():
    job = run(epochs=20, channels=1)
    advice = advise(t4_input([job], dataset_bytes=40 * GB, accounts=2), PRICES)
    assert advice.free.accounts_needed == math.ceil(40 * GB / (15 * GB - RESERVE)) == 3
    assert not advice.free.storage_fits and not advice.free.fits
    assert advice.recommendation.kind in ("rent", "buy")
    assert "needs 3 accounts of 15 GB, the team has 2" in advice.recommendation.reason
    current = [r for r in advice.rent if not r.historical]
    assert advice.recommendation.option == cheapest([*current, *advice.buy]).label
    best = min((o for o in PRICE_DOC["rent"] if not o.get("historical")),
               key=lambda o: rent_cost(o, t4_train_hours(job, 50_000), "decusr"))
    assert advice.recommendation.option == f"rent {best['provider']} {best['gpu']}"
    assert advice.recommendation.cost_usd == pytest.approx(rent_cost(best, t4_train_hours(job, 50_000), "decusr"))


def test_a_step_longer_than_a_session_cannot_be_cut_into_12_hour_pieces():
    usable = PLATFORMS["colab-free"].usable_seconds
    job = run(epochs=1, channels=1, patches_per_second=BATCH / (usable + 3600))  # one step: usable + 1 h
    advice = advise(t4_input([job], images=8), PRICES)
    assert advice.free.storage_fits and not advice.free.pieces_fit
    assert advice.recommendation.kind in ("rent", "buy")
    assert "cannot be cut into 12-hour pieces" in advice.recommendation.reason


def test_a_deadline_free_sessions_cannot_meet_is_advised_to_rent():
    job = run(epochs=500, channels=1)
    free_only = advise(t4_input([job]), PRICES)
    assert free_only.recommendation.kind == "free"
    deadline = free_only.free.calendar_hours * 0.6
    advice = advise(t4_input([job], deadline=deadline), PRICES)
    assert advice.free.fits and not advice.free.meets_deadline
    assert advice.recommendation.kind == "rent"
    assert "past the deadline" in advice.recommendation.reason
    current = [r for r in advice.rent if not r.historical]
    chosen = cheapest([*current, *advice.buy], deadline)
    assert advice.recommendation.option == chosen.label and chosen.calendar_hours <= deadline
    # Renting the free platform's own GPU is too slow for this deadline.
    assert all(not r.meets_deadline for r in current if r.gpu == "T4")


def test_a_long_job_that_free_sessions_cannot_hold_is_cheaper_bought():
    job = run(epochs=50_000, channels=1)
    advice = advise(t4_input([job], dataset_bytes=40 * GB), PRICES)
    train = t4_train_hours(job, 50_000)
    rentals = {f"rent {o['provider']} {o['gpu']}": rent_cost(o, train, "decusr")
               for o in PRICE_DOC["rent"] if not o.get("historical")}
    cheapest_rental = min(rentals.values())
    cheapest_card = min(PRICE_DOC["buy"], key=lambda b: b["usd"])
    assert cheapest_card["usd"] < cheapest_rental
    assert advice.recommendation.kind == "buy"
    assert advice.recommendation.option == f"buy {cheapest_card['item']}"
    assert advice.recommendation.cost_usd == cheapest_card["usd"]
    card = next(b for b in advice.buy if b.item == cheapest_card["item"])
    card_hours = train * raw_speed("T4", "decusr") / raw_speed(card.gpu, "decusr") + LOCAL.startup_minutes / 60
    assert card.hours == pytest.approx(card_hours)
    # Break-even: the hours of use at which the card has cost what renting the same work would.
    assert card.break_even_hours == pytest.approx(card.usd * card_hours / cheapest_rental)
    assert card.cheaper_than_renting and card.break_even_hours < card.hours


def test_a_deadline_nothing_can_meet_is_said_plainly():
    job = run(epochs=20_000, channels=1)
    advice = advise(t4_input([job], dataset_bytes=40 * GB, deadline=1.0), PRICES)
    assert advice.recommendation.kind == "none" and advice.recommendation.cost_usd is None
    assert "no rental or purchase meets the deadline of 1.0 h" in advice.recommendation.reason
    assert not any(o.meets_deadline for o in [*advice.rent, *advice.buy])


def test_more_workers_shorten_the_calendar_of_parallel_runs_but_not_the_cost():
    runs = [run(epochs=300, channels=1, name=f"r{i}") for i in range(3)]
    one, three = (advise(t4_input(runs, workers=w), PRICES) for w in (1, 3))
    assert three.free.calendar_hours < one.free.calendar_hours / 2
    assert [r.cost_usd for r in three.rent] == pytest.approx([r.cost_usd for r in one.rent])


def test_a_profile_of_an_unknown_device_counts_the_work_on_the_free_platforms_gpu():
    cpu = load_profile("cpu")
    inp = replace(t4_input([run(epochs=2, channels=1)]), profile=cpu)
    advice = advise(inp, PRICES)
    assert advice.work.gpu == "T4" and advice.work.profile == "colab-t4"
    assert any("names no GPU of the price file" in note for note in advice.notes)


def test_advice_json_has_the_documented_shape():
    data = advise(t4_input([run(epochs=3, channels=1)]), PRICES).to_json()
    assert data["schema"] == "shardrun.advice/1"
    assert {"job", "prices", "reference_gpu", "deadline_hours", "workers", "work", "free", "rent", "buy",
            "recommendation", "notes"} <= set(data)
    assert {"provider", "gpu", "usd_per_hour", "date", "source", "historical", "hours", "calendar_hours",
            "cost_usd", "meets_deadline"} <= set(data["rent"][0])
    assert {"kind", "option", "cost_usd", "calendar_hours", "reason"} == set(data["recommendation"])
    assert len(data["rent"]) == len(PRICE_DOC["rent"]) and len(data["buy"]) == len(PRICE_DOC["buy"])


@pytest.mark.parametrize("text, hours", [("36h", 36), ("3d", 72), ("2.5 days", 60), ("1w", 168), ("12 hours", 12)])
def test_deadlines_are_hours_or_days(text, hours):
    assert parse_duration_hours(text) == hours


@pytest.mark.parametrize("text", ["36", "3x", "-2d", "0h", "soon"])
def test_a_deadline_without_a_unit_or_positive_number_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_hours(text)


# -- the shipped price file ----------------------------------------------------------------------

TABLE_3 = {("Google", "K80"): 0.135, ("Google", "P100"): 0.43, ("Google", "P4"): 0.216, ("Google", "V100"): 0.74,
           ("Microsoft", "K80"): 0.673, ("Microsoft", "P100"): 1.595, ("Microsoft", "V100"): 2.226,
           ("Microsoft", "M60"): 1.003, ("Amazon", "K80"): 0.425, ("Amazon", "V100"): 1.99, ("Amazon", "M60"): 0.525}


def test_the_price_file_keeps_the_papers_table_3_with_its_date_beside_newer_prices():
    paper = {(r.provider, r.gpu): r for r in PRICES.rent if r.historical}
    assert {k: r.usd_per_hour for k, r in paper.items()} == TABLE_3
    assert all(r.date == "2019" and "Temiz" in r.source for r in paper.values())
    newer = [r for r in PRICES.rent if not r.historical]
    assert {"T4", "L4", "V100", "A100"} <= {r.gpu for r in newer if r.provider == "Google"}
    assert all(r.date > "2019" and r.source.startswith("http") for r in newer)
    assert all(b.source.startswith("http") and b.date for b in PRICES.buy)


def test_measured_speeds_are_the_papers_epoch_time_ratios():
    for device, gpu in (("1050Ti", "GTX 1050Ti"), ("960m", "GTX 960M")):
        speeds = PRICES.gpus[gpu].speeds
        assert speeds["default"] == pytest.approx(paper_seconds("ultrasound", "K80")
                                                  / paper_seconds("ultrasound", device), rel=1e-6)
        assert speeds["decusr"] == pytest.approx(paper_seconds("imagenet", "K80")
                                                 / paper_seconds("imagenet", device), rel=1e-6)
    assert PRICES.gpus["i7-6700HQ"].speeds["default"] == pytest.approx(
        paper_seconds("ultrasound", "K80") / paper_seconds("ultrasound", "i7-6700HQ"), rel=1e-5)


@pytest.mark.parametrize("device, gpu", [
    ("NVIDIA Tesla T4 (Colab), estimated", "T4"), ("Tesla K80 (GPU)", "K80"),
    ("NVIDIA A100-SXM4-40GB (GPU)", "A100"), ("NVIDIA GeForce RTX 4090 (GPU)", "RTX 4090"),
    ("NVIDIA L40S (GPU)", None), ("Tesla P40", None), ("CPU (2 cores)", None)])
def test_devices_are_matched_to_gpus_by_whole_words(device, gpu):
    found = PRICES.gpu_for_device(device)
    assert (found.id if found else None) == gpu


# -- a missing or malformed entry ----------------------------------------------------------------



def broken(old: str, new: str) -> str:
    assert MINIMAL.count(old) == 1, old
    return MINIMAL.replace(old, new)


def test_the_minimal_price_file_is_valid():
    prices = parse_prices(MINIMAL, "mine.toml")
    assert prices.gpus["V100"].speed("decusr") == pytest.approx(15.67 / 4.113)
    assert [r.label for r in prices.rent] == ["Google K80", "Amazon V100"]


@pytest.mark.parametrize("old, new, message", [
    ("usd_per_hour = 1.99\n", "", "rent[1] (Amazon V100) usd_per_hour: missing (required"),
    ("usd_per_hour = 1.99", "usd_per_hour = -1.99",
     "rent[1] (Amazon V100) usd_per_hour = -1.99: must be a finite number greater than 0"),
    ("usd_per_hour = 1.99", 'usd_per_hour = "1.99"', "rent[1] (Amazon V100) usd_per_hour = '1.99': must be"),
    ('gpu = "V100"', 'gpu = "X200"', "rent[1] (Amazon X200) gpu = 'X200': unknown GPU"),
    ('usd_per_hour = 1.99\ndate = "2019"', "usd_per_hour = 1.99", "rent[1] (Amazon V100) date: missing (required"),
    ('usd_per_hour = 1.99\ndate = "2019"', 'usd_per_hour = 1.99\ndate = "last year"',
     "date = 'last year': must be a date"),
    ("fp32_tflops = 15.67\n", "", "gpus.V100.speed: missing; give speed"),
    ("speed = { default = 1.0 }", "speed = { default = 2.0 }", "gpus.K80.speed.default = 2.0: must be 1"),
    ('basis = "estimate"', 'basis = "estimate"\nspeed = { decusr = 3.0 }', "gpus.V100.speed.default: missing"),
    ('basis = "estimate"', 'basis = "estimate"\nspeed = { default = 3.0, unet = 2.0 }',
     "gpus.V100.speed.unet: unknown model family"),
    ('reference = "K80"', 'reference = "K40"', "speed.reference = 'K40': not one of the [gpus] tables"),
    ("[free]\n", "[freee]\n", "freee: unknown table"),
])
def test_a_missing_or_malformed_entry_is_named_with_what_is_wrong(old, new, message):
    with pytest.raises(ConfigError) as info:
        parse_prices(broken(old, new), "mine.toml")
    text = str(info.value)
    assert text.startswith("mine.toml: ") and message in text, text
    assert all(len(line) < 200 for line in text.splitlines())


def test_every_problem_is_reported_at_once():
    text = broken("usd_per_hour = 0.135", "usd_per_hour = 0").replace('gpu = "V100"', 'gpu = "X200"')
    with pytest.raises(ConfigError) as info:
        parse_prices(text, "mine.toml")
    assert "2 problems" in str(info.value)
    assert "rent[0] (Google K80) usd_per_hour = 0" in str(info.value) and "rent[1] (Amazon X200)" in str(info.value)


def test_a_price_file_with_only_historical_prices_is_refused():
    text = MINIMAL.replace('source = "Temiz, Bilge, Uygur 2019, Table 3"',
                           'source = "Temiz, Bilge, Uygur 2019, Table 3"\nhistorical = true')
    with pytest.raises(ConfigError, match="not historical"):
        parse_prices(text, "mine.toml")


def test_a_price_file_that_is_not_toml_or_not_there_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"mine.toml: 1 problem:\n  - not valid TOML"):
        parse_prices("[rent\n", "mine.toml")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'none.toml'}: 1 problem:\n  - no such price file")):
        load_prices(tmp_path / "none.toml")
