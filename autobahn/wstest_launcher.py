# -*- coding: utf-8 -*-
"""Start Autobahn|Testsuite's wstest from a `pip install --prefix DIR` tree (CPython 2.7).

Usage: python2.7 wstest_launcher.py DIR [wstest arguments...]

PYTHONPATH=DIR/lib/python2.7/site-packages is not enough: zope.interface installs the `zope`
namespace package through a *-nspkg.pth file, and .pth files are only processed for site
directories. site.addsitedir() processes them, so `import zope.interface` works.
"""
import os
import site
import sys
import warnings


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: %s PREFIX [wstest args...]\n" % sys.argv[0])
        return 2
    prefix = sys.argv[1]
    sitedir = os.path.join(
        prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"
    )
    if not os.path.isdir(sitedir):
        sys.stderr.write("wstest_launcher: no site-packages at %s\n" % sitedir)
        return 2
    # Put the prefix first so that its pinned packages win over anything in the interpreter's own
    # site-packages, then let addsitedir process its .pth files.
    sys.path.insert(0, sitedir)
    site.addsitedir(sitedir)
    # cryptography 3.3 warns on every start that Python 2 is deprecated; that is known.
    warnings.filterwarnings("ignore", message=".*Python 2 is no longer supported.*")
    sys.argv = ["wstest"] + sys.argv[2:]
    from autobahntestsuite.wstest import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
