"""The server's route table: Starlette routes plus what the OpenAPI document needs.

The server declares its routes much as FastAPI would (``@api.post(path, tags=...)``, query
parameters as :class:`Query` defaults, ``dependencies=`` guards) but runs on Starlette alone:
FastAPI and pydantic took 0.3 s of a 0.66 s cold start to import, and the routes read and
check their bodies themselves anyway (bounded, :mod:`resnetkit.serve.http`).

A handler's parameters are filled by name:

* ``request``: the :class:`starlette.requests.Request`;
* a name in the path's ``{...}``: that path segment, a string;
* a parameter whose default is a :func:`Query`: the query parameter, parsed and checked
  (a bad one raises :class:`resnetkit.errors.InvalidInput`, answered 400).

A handler returns a :class:`Response`, or a JSON-able value answered with the route's
``response_class`` and ``status_code``. Guards (``dependencies=``) run first, before the
handler reads a body: the admin token check of :func:`resnetkit.serve.auth.admin_only`.
:meth:`Api.openapi_paths` writes the paths, parameters and success answers of the OpenAPI
document; :mod:`resnetkit.serve.openapi` completes it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from resnetkit.errors import InvalidInput
from resnetkit.serve.jsonsafe import FiniteJSONResponse

__all__ = ["Api", "Endpoint", "Guard", "Query", "QueryParam"]

#: A check run before a handler, e.g. the admin token; it raises to refuse.
Guard = Callable[[Request], None]
Handler = Callable[..., Awaitable[Any]]

_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


@dataclasses.dataclass(frozen=True)
class QueryParam:
    """A query parameter: its default and its checks (ints when ``default`` is an int)."""

    default: Any = None
    ge: int | None = None
    le: int | None = None
    pattern: str | None = None
    max_length: int | None = None
    alias: str | None = None
    description: str | None = None
    integer: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.default, int) and not isinstance(self.default, bool):
            object.__setattr__(self, "integer", True)

    def parse(self, where: str, text: str | None) -> Any:
        """The parameter's value from its text (None: absent), checked."""
        if text is None:
            return self.default
        if self.integer:
            if not _INTEGER.fullmatch(text):
                raise InvalidInput(f"{where}: Input should be a valid integer")
            value = int(text)
            if self.ge is not None and value < self.ge:
                raise InvalidInput(f"{where}: Input should be greater than or equal to {self.ge}")
            if self.le is not None and value > self.le:
                raise InvalidInput(f"{where}: Input should be less than or equal to {self.le}")
            return value
        if self.max_length is not None and len(text) > self.max_length:
            raise InvalidInput(f"{where}: String should have at most {self.max_length} characters")
        if self.pattern is not None and not re.search(self.pattern, text):
            raise InvalidInput(f"{where}: String should match pattern '{self.pattern}'")
        return text

    def schema(self) -> dict[str, Any]:
        """The parameter's JSON Schema."""
        schema: dict[str, Any] = {"type": "integer" if self.integer else "string"}
        for key, value in (
            ("minimum", self.ge),
            ("maximum", self.le),
            ("pattern", self.pattern),
            ("maxLength", self.max_length),
            ("default", self.default),
        ):
            if value is not None:
                schema[key] = value
        return schema


def Query(
    default: Any = None,
    *,
    ge: int | None = None,
    le: int | None = None,
    pattern: str | None = None,
    max_length: int | None = None,
    alias: str | None = None,
    description: str | None = None,
) -> Any:
    """A query parameter's declaration, as the default of a handler's parameter (typed Any,
    so that the parameter keeps the type of its value)."""
    return QueryParam(default, ge, le, pattern, max_length, alias, description)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One route: its method and path, its handler, and what the OpenAPI document says."""

    method: str
    path: str
    handler: Handler
    tags: tuple[str, ...]
    guards: tuple[Guard, ...]
    status_code: int
    response_class: type[Response]
    openapi_extra: dict[str, Any]
    include_in_schema: bool
    path_params: tuple[str, ...]
    queries: tuple[tuple[str, QueryParam], ...]
    wants_request: bool

    async def __call__(self, request: Request) -> Response:
        for guard in self.guards:
            guard(request)
        kwargs: dict[str, Any] = {}
        for name in self.path_params:
            kwargs[name] = request.path_params[name]
        for name, query in self.queries:
            key = query.alias or name
            kwargs[name] = query.parse(f"query.{key}", request.query_params.get(key))
        if self.wants_request:
            kwargs["request"] = request
        result = await self.handler(**kwargs)
        if isinstance(result, Response):
            return result
        return self.response_class(result, status_code=self.status_code)

    def operation(self) -> dict[str, Any]:
        """The OpenAPI operation: FastAPI's layout (summary from the name, the docstring)."""
        name = self.handler.__name__
        op: dict[str, Any] = {
            "tags": list(self.tags),
            "summary": name.replace("_", " ").title(),
            "operationId": re.sub(r"\W", "_", f"{name}{self.path}") + f"_{self.method}",
        }
        doc = inspect.getdoc(self.handler)
        if doc:
            op["description"] = doc
        parameters = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in self.path_params
        ]
        for name, query in self.queries:
            parameter: dict[str, Any] = {
                "name": query.alias or name,
                "in": "query",
                "required": False,
                "schema": query.schema(),
            }
            if query.description:
                parameter["description"] = query.description
            parameters.append(parameter)
        if parameters:
            op["parameters"] = parameters
        content = {"application/json": {"schema": {"type": "object"}}}
        op["responses"] = {str(self.status_code): {"description": "Successful Response",
                                                    "content": content}}  # fmt: skip
        op.update(self.openapi_extra)
        return op


class Api:
    """The route table: decorators that declare routes, then Starlette routes to serve."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        tags: Sequence[str] = (),
        dependencies: Sequence[Guard] = (),
        status_code: int = 200,
        response_class: type[Response] = FiniteJSONResponse,
        openapi_extra: dict[str, Any] | None = None,
        include_in_schema: bool = True,
    ) -> Callable[[Handler], Handler]:
        """Declare ``handler`` as the answer to ``method path``."""

        def declare(handler: Handler) -> Handler:
            path_params = tuple(_PATH_PARAM.findall(path))
            queries: list[tuple[str, QueryParam]] = []
            parameters = inspect.signature(handler).parameters
            for name, param in parameters.items():
                if isinstance(param.default, QueryParam):
                    queries.append((name, param.default))
                elif name != "request" and name not in path_params:
                    raise TypeError(f"{handler.__name__}: cannot fill parameter {name!r}")
            self.endpoints.append(
                Endpoint(
                    method=method.lower(),
                    path=path,
                    handler=handler,
                    tags=tuple(tags),
                    guards=tuple(dependencies),
                    status_code=status_code,
                    response_class=response_class,
                    openapi_extra=dict(openapi_extra or {}),
                    include_in_schema=include_in_schema,
                    path_params=path_params,
                    queries=tuple(queries),
                    wants_request="request" in parameters,
                )
            )
            return handler

        return declare

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)

    def routes(self) -> list[Route]:
        """One Starlette route per endpoint (a path with several methods: several routes).

        Only the declared method: Starlette would add HEAD to a GET route, which the OpenAPI
        document does not declare (a HEAD answers 405 with ``Allow``, as any other method).
        """
        routes = []
        for e in self.endpoints:
            # A bound method, so that Starlette wraps it as a request -> response endpoint.
            route = Route(e.path, e.__call__, methods=[e.method.upper()], name=e.handler.__name__)
            assert route.methods is not None
            route.methods.discard("HEAD")
            routes.append(route)
        return routes

    def openapi_paths(self) -> dict[str, dict[str, Any]]:
        """The ``paths`` of the OpenAPI document, before :mod:`resnetkit.serve.openapi`."""
        paths: dict[str, dict[str, Any]] = {}
        for endpoint in self.endpoints:
            if endpoint.include_in_schema:
                paths.setdefault(endpoint.path, {})[endpoint.method] = endpoint.operation()
        return paths
