"""The docstrings the text-classification fixture is made from, shared by make_teacher.py
(first paragraphs: the labelled rows) and make_transfer.py (later paragraphs: the
unlabelled transfer rows), so the two walk the same modules in the same order.

GROUPS: the 8 groups of standard-library modules, in label order. `docstrings()` yields
(label, docstring) for the classes and functions each module defines, and the methods of
those classes, by group, then module, then name.
"""
import importlib
import inspect

GROUPS = {
    "filesystem": ["os", "shutil", "pathlib", "glob", "fnmatch", "tempfile", "filecmp", "stat", "zipfile", "tarfile"],
    "network": ["socket", "http.client", "http.server", "http.cookiejar", "urllib.request", "urllib.parse",
                "email.message", "email.utils", "smtplib", "ftplib", "imaplib", "ssl", "socketserver", "xmlrpc.client"],
    "text": ["re", "string", "textwrap", "difflib", "unicodedata", "codecs", "locale", "gettext", "html", "html.parser"],
    "numbers": ["math", "cmath", "statistics", "decimal", "fractions", "random", "numbers", "operator", "_pydecimal"],
    "concurrency": ["threading", "multiprocessing.pool", "multiprocessing.process", "multiprocessing.managers",
                    "multiprocessing.connection", "asyncio.tasks", "asyncio.events", "asyncio.streams", "asyncio.locks",
                    "asyncio.queues", "asyncio.base_events", "concurrent.futures._base", "concurrent.futures.thread",
                    "queue", "subprocess", "sched"],
    "formats": ["json", "json.decoder", "json.encoder", "csv", "pickle", "configparser", "xml.dom.minidom",
                "xml.etree.ElementTree", "plistlib", "base64", "binascii", "struct", "tomllib", "mailbox"],
    "devtools": ["unittest.case", "unittest.mock", "unittest.loader", "doctest", "pdb", "bdb", "trace", "inspect",
                 "dis", "ast", "tokenize", "traceback", "logging", "logging.handlers", "argparse", "optparse"],
    "time": ["datetime", "time", "calendar", "zoneinfo", "_strptime"],
}


def docstrings():
    for label, mods in enumerate(GROUPS.values()):
        for m in mods:
            mod = importlib.import_module(m)
            yield from _visit(mod, mod.__name__, label, 0)


def _visit(obj, module_name, label, depth):
    for name, o in sorted(vars(obj).items()):
        if name.startswith("__"):
            continue
        if inspect.isclass(o) or inspect.isfunction(o):
            if getattr(o, "__module__", None) != module_name:
                continue
            d = inspect.getdoc(o)
            if d:
                yield label, d
            if inspect.isclass(o) and depth == 0:
                yield from _visit(o, module_name, label, 1)
