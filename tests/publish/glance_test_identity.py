"""WSGI filter for the test Glance only: stands in for keystonemiddleware's auth_token.

Glance without Keystone has no project in its request context, so imports fail (``tasks.owner`` is NOT
NULL) and glance 33's policies refuse reads. This filter, placed right before Glance's own ``context``
filter, marks every request that does not already carry an identity as a confirmed member of one fixed
project, exactly as auth_token would after validating a token. A request that sends its own
``X-Identity-Status: Confirmed`` headers keeps them, so tests can act as another project.

Never part of imagebuild itself: it lives in tests/ and is loaded only by tests/publish/servers.py.
"""

PROJECT_ID = "0123456789abcdef0123456789abcdef"
USER_ID = "fedcba9876543210fedcba9876543210"


class TestIdentity:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
            environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed"
            environ["HTTP_X_PROJECT_ID"] = PROJECT_ID
            environ["HTTP_X_TENANT_ID"] = PROJECT_ID
            environ["HTTP_X_USER_ID"] = USER_ID
            environ["HTTP_X_ROLES"] = "admin,member,reader"
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    return TestIdentity
