"""The pure domain: validation, error codes and details, value objects, roles."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stockkeeper.domain import (
    ORDER_LINES_MAX,
    QUANTITY_MAX,
    AuditEntry,
    AuditPage,
    Change,
    Checks,
    FieldError,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidRequest,
    Item,
    OrderLine,
    Reason,
    Receipt,
    Role,
    Shortage,
    StockkeeperError,
    Unauthenticated,
    Unavailable,
    UnknownSku,
    check_order_lines,
    format_timestamp,
)

AT = datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=UTC)


def fields_of(checks: Checks) -> list[str]:
    return [error.field for error in checks.errors]


def line(sku: object = "A-1", quantity: object = 1) -> dict[str, object]:
    return {"sku": sku, "quantity": quantity}


def entry(version: int) -> AuditEntry:
    return AuditEntry(
        id=version,
        sku="A-1",
        version=version,
        delta=1,
        on_hand=version,
        user="clerk",
        on_behalf_of=None,
        reason=Reason.RESTOCK,
        idempotency_key=None,
        at=AT,
    )


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("sku", ["A-1", "a", "Z.z_9-0", "x" * 64, "0123456789", "...", "A_B.C-D"])
def test_sku_accepts_1_to_64_of_the_allowed_characters(sku: str) -> None:
    checks = Checks()
    assert checks.sku("sku", sku) == sku
    assert checks.errors == []


@pytest.mark.parametrize(
    "sku",
    ["", "x" * 65, "A 1", "A/1", "A+1", "é", "A-1\n", "\nA-1", "A\x00", None, 7, 1.5, b"A-1"],
)
def test_sku_rejects_anything_else(sku: object) -> None:
    checks = Checks()
    assert checks.sku("lines[3].sku", sku) == ""
    assert fields_of(checks) == ["lines[3].sku"]
    assert "1-64" in checks.errors[0].message


@pytest.mark.parametrize("value", [1, 2, QUANTITY_MAX - 1, QUANTITY_MAX])
def test_quantity_accepts_integers_in_range(value: int) -> None:
    checks = Checks()
    assert checks.quantity("quantity", value) == value
    assert checks.errors == []


@pytest.mark.parametrize(
    "value", [0, -1, QUANTITY_MAX + 1, True, False, 1.0, 2.5, "1", None, [1], float("nan")]
)
def test_quantity_rejects_out_of_range_bool_float_and_str(value: object) -> None:
    checks = Checks()
    assert checks.quantity("quantity", value) == 0
    assert checks.errors == [FieldError("quantity", f"must be an integer from 1 to {QUANTITY_MAX}")]


@pytest.mark.parametrize(
    ("value", "low", "high", "ok"),
    [(0, 0, 10, True), (10, 0, 10, True), (-1, 0, 10, False), (11, 0, 10, False)],
)
def test_integer_bounds_are_inclusive(value: int, low: int, high: int, ok: bool) -> None:
    checks = Checks()
    assert checks.integer("n", value, low, high) == (value if ok else 0)
    assert (checks.errors == []) is ok


@pytest.mark.parametrize(
    "text",
    [None, "a", " ", "~", "shopper-42", "x" * 255, "".join(chr(c) for c in range(0x20, 0x7F))],
)
def test_optional_text_accepts_none_and_1_to_255_printable_ascii(text: str | None) -> None:
    checks = Checks()
    assert checks.optional_text("on_behalf_of", text) == text
    assert checks.errors == []


@pytest.mark.parametrize(
    "text", ["", "x" * 256, "tab\there", "new\nline", "\x7f", "\x1f", "é", "日本", 5, b"abc"]
)
def test_optional_text_rejects_empty_long_non_printable_and_non_str(text: object) -> None:
    checks = Checks()
    assert checks.optional_text("on_behalf_of", text) is None
    assert fields_of(checks) == ["on_behalf_of"]
    assert "1-255 printable ASCII" in checks.errors[0].message


def test_checks_collect_every_error_and_raise_them_together() -> None:
    checks = Checks()
    checks.sku("sku", "")
    checks.quantity("quantity", 0)
    checks.optional_text("on_behalf_of", "")
    with pytest.raises(InvalidRequest) as raised:
        checks.raise_if_any()
    assert [e["field"] for e in raised.value.details()["errors"]] == [
        "sku",
        "quantity",
        "on_behalf_of",
    ]
    assert raised.value.code == "invalid_request"
    assert "sku:" in str(raised.value) and "quantity:" in str(raised.value)


def test_checks_without_errors_do_not_raise() -> None:
    checks = Checks()
    checks.sku("sku", "A-1")
    checks.raise_if_any()


# --- order lines ----------------------------------------------------------------------------


def test_order_lines_parse_dicts_and_order_lines_in_request_order() -> None:
    checks = Checks()
    parsed = check_order_lines(checks, [line("B", 2), OrderLine("A", 1), line("C", QUANTITY_MAX)])
    assert checks.errors == []
    assert parsed == [OrderLine("B", 2), OrderLine("A", 1), OrderLine("C", QUANTITY_MAX)]


def test_order_lines_accept_exactly_the_maximum() -> None:
    checks = Checks()
    lines = [line(f"S{i}") for i in range(ORDER_LINES_MAX)]
    assert len(check_order_lines(checks, tuple(lines))) == ORDER_LINES_MAX
    assert checks.errors == []


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], [("lines", "1 to 100")]),
        ((), [("lines", "1 to 100")]),
        (None, [("lines", "1 to 100")]),
        ("A-1", [("lines", "1 to 100")]),
        ({"sku": "A-1", "quantity": 1}, [("lines", "1 to 100")]),
        ([line(f"S{i}") for i in range(ORDER_LINES_MAX + 1)], [("lines", "at most 100")]),
        ([line("A"), line("B"), line("A", 3)], [("lines[2].sku", "duplicate sku 'A'")]),
        (
            [line("A"), "A", 3, None, ["A", 1]],
            [(f"lines[{i}]", "must be an object") for i in (1, 2, 3, 4)],
        ),
        (
            [{"sku": "A", "quantity": 1, "price": 3, "note": "x"}],
            [("lines[0].note", "unknown field"), ("lines[0].price", "unknown field")],
        ),
        ([{"quantity": 1}], [("lines[0].sku", "required")]),
        ([{"sku": "A"}], [("lines[0].quantity", "required")]),
        ([line("A", True)], [("lines[0].quantity", "integer from 1")]),
        ([line("A", 1.0)], [("lines[0].quantity", "integer from 1")]),
        ([line("A", "2")], [("lines[0].quantity", "integer from 1")]),
        ([line("A b", 0)], [("lines[0].sku", "1-64"), ("lines[0].quantity", "integer from 1")]),
    ],
    ids=[
        "empty-list",
        "empty-tuple",
        "none",
        "string",
        "object",
        "over-100",
        "duplicate",
        "non-object-lines",
        "unknown-fields",
        "missing-sku",
        "missing-quantity",
        "bool-quantity",
        "float-quantity",
        "str-quantity",
        "two-bad-fields",
    ],
)
def test_order_lines_report_every_problem(lines: object, expected: list[tuple[str, str]]) -> None:
    checks = Checks()
    check_order_lines(checks, lines)
    assert fields_of(checks) == [name for name, _ in expected]
    for error, (_, message) in zip(checks.errors, expected, strict=True):
        assert message in error.message


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (StockkeeperError("x"), "error", {}),
        (
            InvalidRequest([FieldError("quantity", "bad")]),
            "invalid_request",
            {"errors": [{"field": "quantity", "message": "bad"}]},
        ),
        (UnknownSku("A-1"), "unknown_sku", {"sku": "A-1"}),
        (IdempotencyKeyReused("k"), "idempotency_key_reused", {}),
        (Unavailable("down"), "unavailable", {}),
        (Unauthenticated("who"), "unauthenticated", {}),
        (Forbidden("no"), "forbidden", {}),
        (
            InsufficientStock([Shortage("A-1", 5, 2)]),
            "insufficient_stock",
            {"sku": "A-1", "requested": 5, "available": 2},
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_errors_have_stable_codes_and_details(
    error: StockkeeperError, code: str, details: dict[str, object]
) -> None:
    assert isinstance(error, StockkeeperError)
    assert error.code == code
    assert error.details() == details


def test_insufficient_stock_of_a_purchase_names_its_one_shortage() -> None:
    error = InsufficientStock([Shortage("A-1", 5, 2)])
    assert (error.sku, error.requested, error.available) == ("A-1", 5, 2)
    assert "shortages" not in error.details()
    assert str(error) == "A-1: requested 5, available 2"


def test_insufficient_stock_of_an_order_lists_every_shortage() -> None:
    shortages = [Shortage("B", 5, 2), Shortage("A", 3, 0)]
    error = InsufficientStock(shortages, is_order=True)
    assert (error.sku, error.requested, error.available) == ("B", 5, 2)
    assert error.details() == {
        "sku": "B",
        "requested": 5,
        "available": 2,
        "shortages": [
            {"sku": "B", "requested": 5, "available": 2},
            {"sku": "A", "requested": 3, "available": 0},
        ],
    }
    assert "B: requested 5" in str(error) and "A: requested 3" in str(error)


def test_unknown_sku_and_reused_key_name_their_subject() -> None:
    assert "'A-1'" in str(UnknownSku("A-1"))
    assert IdempotencyKeyReused("key-1").key == "key-1"


# --- value objects --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "created"),
    [((1,), True), ((2,), False), ((7,), False), ((1, 1), False), ((), False)],
)
def test_receipt_created_means_one_change_at_version_1(
    versions: tuple[int, ...], created: bool
) -> None:
    receipt = Receipt(tuple(Change(f"S{i}", 5, 5, v, i) for i, v in enumerate(versions)))
    assert receipt.created is created
    assert receipt.replayed is False


def test_receipt_change_is_its_only_change() -> None:
    change = Change("A-1", -1, 6, 13, 981)
    assert Receipt((change,), replayed=True).change == change
    with pytest.raises(AssertionError):
        _ = Receipt((change, change)).change


def test_change_and_item_json_round_trip() -> None:
    change = Change("A-1", -1, 6, 13, 981, held_delta=0, held=2)
    assert change.to_json() == {
        "sku": "A-1",
        "delta": -1,
        "on_hand": 6,
        "version": 13,
        "audit_id": 981,
        "held_delta": 0,
        "held": 2,
        "available": 4,
    }
    assert Change.from_json(change.to_json()) == change
    assert change.item == Item("A-1", 6, 13, 2)
    assert Item("A-1", 7, 12, 3).to_json() == {
        "sku": "A-1",
        "on_hand": 7,
        "held": 3,
        "available": 4,
        "version": 12,
    }


def test_an_answer_kept_before_holds_reads_back_with_nothing_held() -> None:
    """Idempotency keys keep the JSON answer; one saved by an older server has no held fields."""
    kept = {"sku": "A-1", "delta": -1, "on_hand": 6, "version": 13, "audit_id": 981}
    assert Change.from_json(kept) == Change("A-1", -1, 6, 13, 981, held_delta=0, held=0)


@pytest.mark.parametrize(
    ("fetched", "limit", "versions", "next_after"),
    [
        (0, 3, [], None),
        (2, 3, [1, 2], None),
        (3, 3, [1, 2, 3], None),
        (4, 3, [1, 2, 3], 3),
        (2, 1, [1], 1),
    ],
)
def test_audit_page_from_fetched_uses_the_extra_row_only_as_a_next_marker(
    fetched: int, limit: int, versions: list[int], next_after: int | None
) -> None:
    page = AuditPage.from_fetched([entry(v) for v in range(1, fetched + 1)], limit)
    assert [e.version for e in page.entries] == versions
    assert page.next_after_version == next_after
    assert isinstance(page.entries, tuple)


def test_audit_page_next_marker_follows_versions_not_positions() -> None:
    page = AuditPage.from_fetched([entry(v) for v in (10, 11, 12)], 2)
    assert page.next_after_version == 11


@pytest.mark.parametrize(
    ("at", "text"),
    [
        (AT, "2024-05-06T07:08:09.000123Z"),
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05.000000Z"),
        (datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "1999-12-31T23:59:59.999999Z"),
    ],
)
def test_format_timestamp_is_rfc3339_utc_with_microseconds(at: datetime, text: str) -> None:
    assert format_timestamp(at) == text


def test_audit_entry_json_has_every_contract_field() -> None:
    assert entry(4).to_json() == {
        "id": 4,
        "sku": "A-1",
        "version": 4,
        "delta": 1,
        "on_hand": 4,
        "held_delta": 0,
        "held": 0,
        "hold_id": None,
        "user": "clerk",
        "on_behalf_of": None,
        "reason": "restock",
        "idempotency_key": None,
        "at": "2024-05-06T07:08:09.000123Z",
    }


# --- roles ----------------------------------------------------------------------------------


def test_roles_are_ordered_so_higher_includes_lower() -> None:
    assert Role.READER < Role.CLERK < Role.ADMIN
    assert sorted([Role.ADMIN, Role.READER, Role.CLERK]) == [Role.READER, Role.CLERK, Role.ADMIN]
    assert Role.ADMIN >= Role.CLERK and not Role.READER >= Role.CLERK


@pytest.mark.parametrize(
    ("name", "role"),
    [("reader", Role.READER), ("clerk", Role.CLERK), ("admin", Role.ADMIN), ("Admin", Role.ADMIN)],
)
def test_role_parse_is_case_insensitive(name: str, role: Role) -> None:
    assert Role.parse(name) is role


@pytest.mark.parametrize("name", ["", "boss", "root", "readers", " admin"])
def test_role_parse_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse(name)


def test_reasons_are_the_contract_strings() -> None:
    assert [r.value for r in Reason] == [
        "purchase",
        "restock",
        "order",
        "set",
        "hold",
        "confirm",
        "release",
        "expire",
    ]
