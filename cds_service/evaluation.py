"""Service logic: one hook call in, one CDS Hooks response out. No HTTP here.

request -> orders to evaluate -> patient record -> assessment (clinical knowledge) -> cards
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .cards import PresentedCard, Presenter, RatingAction, load_site_codes
from .configuration import ClientProfile, Settings
from .fhir_client import ConnectionPools, FhirClient
from .fhir_models import draft_order_model
from .knowledge import Knowledge, OrderedStudy
from .knowledge.facts import FactReader
from .knowledge.rules import Assessment, assess
from .patient_record import PatientRecord, build_record
from .protocol import CdsError, HookRequest
from .services import ServiceDefinition

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class OrderUnderReview:
    resource: dict[str, Any]  # the draft ServiceRequest exactly as the client sent it
    study: OrderedStudy

    @property
    def reference(self) -> str:
        return f"ServiceRequest/{self.resource.get('id')}"


@dataclass
class OrderResult:
    order: OrderUnderReview
    assessment: Assessment
    cards: list[PresentedCard]
    rating: RatingAction

    @property
    def consult_id(self) -> str:
        return self.rating.consult_id


@dataclass
class Evaluation:
    """The answer plus what the audit trail and the logs need to know about it."""

    response: dict[str, Any]
    orders: list[OrderUnderReview] = field(default_factory=list)
    record: PatientRecord | None = None
    results: list[OrderResult] = field(default_factory=list)
    silent: bool = False  # evaluated and audited, but the client was answered no cards
    full_response: dict[str, Any] | None = None  # what a silent service would have answered
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def assessments(self) -> list[Assessment]:
        return [result.assessment for result in self.results]

    @property
    def rules_fired(self) -> list[str]:
        return sorted({rule for assessment in self.assessments for rule in assessment.fired})

    @property
    def ratings(self) -> list[str]:
        return [assessment.rating for assessment in self.assessments]


class Evaluator:
    def __init__(
        self,
        settings: Settings,
        knowledge: Knowledge,
        *,
        clock: Clock = utc_now,
        fhir_client_factory: Callable[..., FhirClient] = FhirClient,
        presenter: Presenter | None = None,
    ) -> None:
        self.settings = settings
        self.knowledge = knowledge
        self.presenter = presenter or Presenter(load_site_codes(settings.site_codes), settings.client_profile)
        self._presenters: dict[tuple[ClientProfile, str | None], Presenter] = {}
        self.clock = clock
        self.fhir_client_factory = fhir_client_factory
        self.fhir_pools = ConnectionPools()

    def presenter_for(self, profile: ClientProfile | None, site_codes: str | None = None) -> Presenter:
        """The presenter for a client's profile (and its own site code map, e.g. Epic preference-list codes)."""
        profile = profile or self.settings.client_profile
        if profile is self.presenter.profile and site_codes is None:
            return self.presenter
        key = (profile, site_codes)
        if key not in self._presenters:
            codes = load_site_codes(Path(site_codes)) if site_codes else self.presenter.site_codes
            self._presenters[key] = dataclasses.replace(self.presenter, site_codes=codes, profile=profile)
        return self._presenters[key]

    def evaluate(
        self,
        service: ServiceDefinition,
        request: HookRequest,
        profile: ClientProfile | None = None,
        site_codes: str | None = None,
    ) -> Evaluation:
        check_request(service, request, self.settings.max_orders)
        started = time.perf_counter()
        reviewing = service.hook == "patient-view"  # the chart's own pending orders, not drafts
        orders = [] if reviewing else self.orders_to_evaluate(service, request)
        if not orders and not reviewing:
            return Evaluation(response={"cards": []})
        now = self.clock()
        contrast = any(order.study.uses_contrast for order in orders)
        reading_list = self.knowledge.reading_list.within(now, self.settings.thresholds, contrast_ordered=contrast)
        record = build_record(request, service, self.settings, reading_list, self.fhir_client_factory, self.fhir_pools)
        fetched = time.perf_counter()
        if reviewing:
            orders = self.pending_orders(record)
            if not orders:
                return Evaluation(response={"cards": []}, record=record)
        evaluation = Evaluation(response={"cards": []}, orders=orders, record=record)
        presenter = self.presenter_for(profile, site_codes)
        knowledge = self.knowledge
        reader = FactReader(knowledge.value_sets, self.settings.thresholds, now, knowledge.facts, knowledge.code_index,
                            knowledge.sources_by_type)  # fmt: skip
        for order in orders:
            model = draft_order_model(order.resource, record.patient_id, record.data_quality)
            assessment = assess(
                reader.read(record, order.resource, model, order.study), self.settings.thresholds, self.knowledge.rules
            )
            consult_id = presenter.new_consult_id()
            cards = presenter.cards(assessment, order.resource, consult_id)
            if reviewing:  # advice on a placed order: no actions on an order that is not a draft
                cards = [_without_suggestions(card) for card in cards]
            evaluation.results.append(
                OrderResult(order, assessment, cards, presenter.rating_action(assessment, order.resource, consult_id))
            )
        cards_json = [card.json for result in evaluation.results for card in result.cards]
        actions = [] if reviewing else [result.rating.json for result in evaluation.results]
        evaluation.response = {"cards": cards_json, "systemActions": actions}
        if presenter.profile is ClientProfile.SANDBOX and actions:
            evaluation.response["extension"] = {"systemActions": actions}  # the sandbox reads only this
        if self.settings.silent or service.silent:  # silent roll-out: evaluate and audit, show nothing
            evaluation.silent, evaluation.full_response = True, evaluation.response
            evaluation.response = {"cards": []}
        evaluation.timings_ms = {
            "patient_data": (fetched - started) * 1000,
            "rules_and_cards": (time.perf_counter() - fetched) * 1000,
        }
        return evaluation

    def pending_orders(self, record: PatientRecord) -> list[OrderUnderReview]:
        """patient-view (Oracle Health's client offers no order hooks): the chart's active lumbar MRI
        orders not yet performed, reviewed with the same rules and cards."""
        orders = []
        record.type_deferred("ServiceRequest", None)  # every pending order, whatever its date
        for model in record.service_requests:
            if model.status not in ("active", "on-hold") or model.intent not in ("order", "original-order", "plan"):
                continue
            resource = model.model_dump(mode="json", exclude_none=True)
            study = self.knowledge.lumbar_mri_study(resource)
            if study is not None:
                orders.append(OrderUnderReview(resource, study))
        return orders[: self.settings.max_orders]

    def orders_to_evaluate(self, service: ServiceDefinition, request: HookRequest) -> list[OrderUnderReview]:
        """Draft lumbar-spine MRI ServiceRequests: for order-select those selected, for order-sign all."""
        selected = set(request.context.selections or ()) if service.hook == "order-select" else None
        orders = []
        for entry in request.context.draftOrders.entry if request.context.draftOrders else []:
            resource = entry.resource
            if not resource or resource.get("resourceType") != "ServiceRequest" or resource.get("status") != "draft":
                continue
            if selected is not None and f"ServiceRequest/{resource.get('id')}" not in selected:
                continue
            study = self.knowledge.lumbar_mri_study(resource)
            if study is not None:
                orders.append(OrderUnderReview(resource, study))
        return orders


def _without_suggestions(card: PresentedCard) -> PresentedCard:
    body = {key: value for key, value in card.json.items() if key not in ("suggestions", "selectionBehavior")}
    return dataclasses.replace(card, json=body)


def check_request(service: ServiceDefinition, request: HookRequest, max_orders: int = 50) -> None:
    """What the service relies on beyond the wire shape (400 with the field named)."""
    if request.hook != service.hook:
        raise CdsError(
            400, f"This service answers the {service.hook!r} hook, not the one in the request", expression=["hook"]
        )
    drafts = request.context.draftOrders
    if drafts is None:
        if service.hook in ("order-select", "order-sign"):
            raise CdsError(400, f"{service.hook} requires context.draftOrders", expression=["context.draftOrders"])
        return
    if len(drafts.entry) > max_orders:
        raise CdsError(400, f"At most {max_orders} draft orders are evaluated per call (CDS_MAX_ORDERS)",
                       expression=["context.draftOrders.entry"])  # fmt: skip
    if service.hook == "order-select" and request.context.selections is None:
        raise CdsError(400, "order-select requires context.selections", expression=["context.selections"])
    for index, entry in enumerate(drafts.entry):
        if entry.resource is not None and not isinstance(entry.resource.get("resourceType"), str):
            raise CdsError(
                400,
                "A draft order has no resourceType",
                expression=[f"context.draftOrders.entry.{index}.resource.resourceType"],
            )
        # the rating is written back by appending to the order's extensions (Argonaut PAMA)
        if entry.resource is not None and not isinstance(entry.resource.get("extension", []), list):
            raise CdsError(
                400,
                "A draft order's extension must be an array (FHIR)",
                expression=[f"context.draftOrders.entry.{index}.resource.extension"],
            )
