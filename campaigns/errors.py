"""JSON errors of the API: one ``error_response`` and the app's error handlers."""

import logging

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from extensions import db

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error to answer as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status, code, message, headers=None):
    """The JSON error answer of the contract."""
    response = jsonify(error=code, message=message)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def retry_after_only_when_limited(response):
    """Flask-Limiter puts ``Retry-After`` on every answer; keep it where it means something (429, 503)."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    return response


def wants_json():
    """API paths, and clients that do not ask for HTML, get JSON errors."""
    if request.path.startswith("/api/"):
        return True
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "application/json"


CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}


def register_error_handlers(app):
    """JSON for the API, the default pages elsewhere; a 500 rolls the session back."""

    @app.errorhandler(ApiError)
    def handle_api_error(exc):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc):
        if not wants_json():
            return exc
        headers = {}
        if exc.code == 429 and exc.response is not None and "Retry-After" in exc.response.headers:
            headers["Retry-After"] = exc.response.headers["Retry-After"]
        if exc.code == 405:
            # RFC 9110 15.5.6: a 405 names the methods the resource has.
            headers.update((name, value) for name, value in exc.get_headers() if name == "Allow")
        code = CODES.get(exc.code, "error")
        return error_response(exc.code, code, exc.description or code, headers)

    @app.errorhandler(Exception)
    def handle_unexpected(exc):
        db.session.rollback()
        log.exception("unhandled error on %s %s", request.method, request.path)
        if wants_json():
            return error_response(500, "internal_error", "something went wrong on our side")
        return "Internal Server Error", 500
