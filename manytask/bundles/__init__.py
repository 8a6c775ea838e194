"""Bundles: a frozen trunk stored once and task packages (branch + head) added, updated or removed one at a
time; what ``manytask serve`` serves and the API's ``Model.to_bundle`` writes."""

from manytask.bundles.package import BundleError, TaskPackage, load_package, package_from_run  # noqa: F401
from manytask.bundles.store import Bundle  # noqa: F401
