import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Filter(_message.Message):
    __slots__ = ("dimension", "value")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    value: str
    def __init__(self, dimension: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class NamedWindow(_message.Message):
    __slots__ = ("name", "timezone")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    name: str
    timezone: str
    def __init__(self, name: _Optional[str] = ..., timezone: _Optional[str] = ...) -> None: ...

class DateRange(_message.Message):
    __slots__ = ("since", "until")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    since: str
    until: str
    def __init__(self, since: _Optional[str] = ..., until: _Optional[str] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("since", "until")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSpendRequest(_message.Message):
    __slots__ = ("group_by", "filters", "window", "dates", "time")
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    DATES_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    window: NamedWindow
    dates: DateRange
    time: TimeRange
    def __init__(self, group_by: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., window: _Optional[_Union[NamedWindow, _Mapping]] = ..., dates: _Optional[_Union[DateRange, _Mapping]] = ..., time: _Optional[_Union[TimeRange, _Mapping]] = ...) -> None: ...

class Tokens(_message.Message):
    __slots__ = ("input", "cached_input", "cache_write", "cache_write_1h", "output", "reasoning")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_1H_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    input: int
    cached_input: int
    cache_write: int
    cache_write_1h: int
    output: int
    reasoning: int
    def __init__(self, input: _Optional[int] = ..., cached_input: _Optional[int] = ..., cache_write: _Optional[int] = ..., cache_write_1h: _Optional[int] = ..., output: _Optional[int] = ..., reasoning: _Optional[int] = ...) -> None: ...

class Refusals(_message.Message):
    __slots__ = ("guardrail", "rate_limit", "budget", "policy")
    GUARDRAIL_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    guardrail: int
    rate_limit: int
    budget: int
    policy: int
    def __init__(self, guardrail: _Optional[int] = ..., rate_limit: _Optional[int] = ..., budget: _Optional[int] = ..., policy: _Optional[int] = ...) -> None: ...

class SpendRow(_message.Message):
    __slots__ = ("key", "requests", "tokens", "cost_micros", "estimated_cost_micros", "reported_cost_micros", "cache_hits", "cache_saved_micros", "refused")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAVED_MICROS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    requests: int
    tokens: Tokens
    cost_micros: int
    estimated_cost_micros: int
    reported_cost_micros: int
    cache_hits: int
    cache_saved_micros: int
    refused: Refusals
    def __init__(self, key: _Optional[_Iterable[str]] = ..., requests: _Optional[int] = ..., tokens: _Optional[_Union[Tokens, _Mapping]] = ..., cost_micros: _Optional[int] = ..., estimated_cost_micros: _Optional[int] = ..., reported_cost_micros: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_saved_micros: _Optional[int] = ..., refused: _Optional[_Union[Refusals, _Mapping]] = ...) -> None: ...

class GetSpendResponse(_message.Message):
    __slots__ = ("group_by", "first_day", "last_day", "timezone", "rows", "total")
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    FIRST_DAY_FIELD_NUMBER: _ClassVar[int]
    LAST_DAY_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    first_day: str
    last_day: str
    timezone: str
    rows: _containers.RepeatedCompositeFieldContainer[SpendRow]
    total: SpendRow
    def __init__(self, group_by: _Optional[_Iterable[str]] = ..., first_day: _Optional[str] = ..., last_day: _Optional[str] = ..., timezone: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[SpendRow, _Mapping]]] = ..., total: _Optional[_Union[SpendRow, _Mapping]] = ...) -> None: ...

class Override(_message.Message):
    __slots__ = ("budget", "scope_value", "limit_micros", "expires_at", "reason", "set_by", "set_at", "previous_limit_micros")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    SET_AT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    budget: str
    scope_value: str
    limit_micros: int
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    set_by: str
    set_at: _timestamp_pb2.Timestamp
    previous_limit_micros: int
    def __init__(self, budget: _Optional[str] = ..., scope_value: _Optional[str] = ..., limit_micros: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., set_by: _Optional[str] = ..., set_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_limit_micros: _Optional[int] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("budget", "scope_kind", "scope_value", "action", "limit_micros", "configured_limit_micros", "top_up_micros", "spent_micros", "held_micros", "remaining_micros", "window", "window_id", "window_start", "resets_at", "override")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_KIND_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    TOP_UP_MICROS_FIELD_NUMBER: _ClassVar[int]
    SPENT_MICROS_FIELD_NUMBER: _ClassVar[int]
    HELD_MICROS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MICROS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    budget: str
    scope_kind: str
    scope_value: str
    action: str
    limit_micros: int
    configured_limit_micros: int
    top_up_micros: int
    spent_micros: int
    held_micros: int
    remaining_micros: int
    window: str
    window_id: str
    window_start: _timestamp_pb2.Timestamp
    resets_at: _timestamp_pb2.Timestamp
    override: Override
    def __init__(self, budget: _Optional[str] = ..., scope_kind: _Optional[str] = ..., scope_value: _Optional[str] = ..., action: _Optional[str] = ..., limit_micros: _Optional[int] = ..., configured_limit_micros: _Optional[int] = ..., top_up_micros: _Optional[int] = ..., spent_micros: _Optional[int] = ..., held_micros: _Optional[int] = ..., remaining_micros: _Optional[int] = ..., window: _Optional[str] = ..., window_id: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., override: _Optional[_Union[Override, _Mapping]] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets",)
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    def __init__(self, budgets: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ...) -> None: ...

class GetBudgetStatusRequest(_message.Message):
    __slots__ = ("budget", "scope_value")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    budget: str
    scope_value: str
    def __init__(self, budget: _Optional[str] = ..., scope_value: _Optional[str] = ...) -> None: ...

class GetBudgetStatusResponse(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ...) -> None: ...

class SetOverrideRequest(_message.Message):
    __slots__ = ("budget", "scope_value", "limit_micros", "expires_at", "reason")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    budget: str
    scope_value: str
    limit_micros: int
    expires_at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, budget: _Optional[str] = ..., scope_value: _Optional[str] = ..., limit_micros: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class RemoveOverrideRequest(_message.Message):
    __slots__ = ("budget", "scope_value", "reason")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    budget: str
    scope_value: str
    reason: str
    def __init__(self, budget: _Optional[str] = ..., scope_value: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RemoveOverrideResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListOverridesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOverridesResponse(_message.Message):
    __slots__ = ("overrides",)
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    overrides: _containers.RepeatedCompositeFieldContainer[Override]
    def __init__(self, overrides: _Optional[_Iterable[_Union[Override, _Mapping]]] = ...) -> None: ...

class TopUpRequest(_message.Message):
    __slots__ = ("budget", "scope_value", "amount_micros", "reason")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    budget: str
    scope_value: str
    amount_micros: int
    reason: str
    def __init__(self, budget: _Optional[str] = ..., scope_value: _Optional[str] = ..., amount_micros: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TopUpResponse(_message.Message):
    __slots__ = ("top_up_micros", "status")
    TOP_UP_MICROS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    top_up_micros: int
    status: BudgetStatus
    def __init__(self, top_up_micros: _Optional[int] = ..., status: _Optional[_Union[BudgetStatus, _Mapping]] = ...) -> None: ...

class GetReconciliationRequest(_message.Message):
    __slots__ = ("providers", "day", "dates")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    DATES_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    day: str
    dates: DateRange
    def __init__(self, providers: _Optional[_Iterable[str]] = ..., day: _Optional[str] = ..., dates: _Optional[_Union[DateRange, _Mapping]] = ...) -> None: ...

class ReconciliationRow(_message.Message):
    __slots__ = ("model", "gateway_tokens", "provider_tokens", "outside_tokens", "gateway_requests", "provider_requests", "gateway_cost_micros", "estimated_cost_micros", "provider_cost_micros", "outside_cost_micros", "difference_micros", "capture_rate", "explained_outside_micros", "explained_estimates_micros", "explained_rounding_micros", "unexplained_micros")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_MICROS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_RATE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_OUTSIDE_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_ESTIMATES_MICROS_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_ROUNDING_MICROS_FIELD_NUMBER: _ClassVar[int]
    UNEXPLAINED_MICROS_FIELD_NUMBER: _ClassVar[int]
    model: str
    gateway_tokens: Tokens
    provider_tokens: Tokens
    outside_tokens: Tokens
    gateway_requests: int
    provider_requests: int
    gateway_cost_micros: int
    estimated_cost_micros: int
    provider_cost_micros: int
    outside_cost_micros: int
    difference_micros: int
    capture_rate: str
    explained_outside_micros: int
    explained_estimates_micros: int
    explained_rounding_micros: int
    unexplained_micros: int
    def __init__(self, model: _Optional[str] = ..., gateway_tokens: _Optional[_Union[Tokens, _Mapping]] = ..., provider_tokens: _Optional[_Union[Tokens, _Mapping]] = ..., outside_tokens: _Optional[_Union[Tokens, _Mapping]] = ..., gateway_requests: _Optional[int] = ..., provider_requests: _Optional[int] = ..., gateway_cost_micros: _Optional[int] = ..., estimated_cost_micros: _Optional[int] = ..., provider_cost_micros: _Optional[int] = ..., outside_cost_micros: _Optional[int] = ..., difference_micros: _Optional[int] = ..., capture_rate: _Optional[str] = ..., explained_outside_micros: _Optional[int] = ..., explained_estimates_micros: _Optional[int] = ..., explained_rounding_micros: _Optional[int] = ..., unexplained_micros: _Optional[int] = ...) -> None: ...

class ReconciliationDay(_message.Message):
    __slots__ = ("provider", "day", "reconciled_at", "rows", "total")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_AT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    day: str
    reconciled_at: _timestamp_pb2.Timestamp
    rows: _containers.RepeatedCompositeFieldContainer[ReconciliationRow]
    total: ReconciliationRow
    def __init__(self, provider: _Optional[str] = ..., day: _Optional[str] = ..., reconciled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[ReconciliationRow, _Mapping]]] = ..., total: _Optional[_Union[ReconciliationRow, _Mapping]] = ...) -> None: ...

class GetReconciliationResponse(_message.Message):
    __slots__ = ("days", "missing")
    DAYS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    days: _containers.RepeatedCompositeFieldContainer[ReconciliationDay]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, days: _Optional[_Iterable[_Union[ReconciliationDay, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class RunReconciliationRequest(_message.Message):
    __slots__ = ("providers", "day", "reason")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedScalarFieldContainer[str]
    day: str
    reason: str
    def __init__(self, providers: _Optional[_Iterable[str]] = ..., day: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RunReconciliationResponse(_message.Message):
    __slots__ = ("days",)
    DAYS_FIELD_NUMBER: _ClassVar[int]
    days: _containers.RepeatedCompositeFieldContainer[ReconciliationDay]
    def __init__(self, days: _Optional[_Iterable[_Union[ReconciliationDay, _Mapping]]] = ...) -> None: ...
