# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Save files before the first change and put them back byte for byte.

A snapshot records whether the path existed, whether it was a symlink (and
to what), its bytes, mode and owner. It is taken once, before the first
change, and kept across later runs, so that removal restores what the host
had before the collection came, not an intermediate state.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import tempfile


def _first_missing_directory(path):
    missing = None
    directory = os.path.dirname(path)
    while directory and directory != '/' and not os.path.isdir(directory):
        missing = directory
        directory = os.path.dirname(directory)
    return missing


def capture(path):
    entry = {'path': path, 'exists': os.path.lexists(path)}
    if not entry['exists']:
        # Directories made to hold the file go again on restore.
        entry['missing_directory'] = _first_missing_directory(path)
        return entry
    if os.path.islink(path):
        entry['symlink'] = os.readlink(path)
        return entry
    st = os.stat(path)
    with open(path, 'rb') as f:
        entry['content'] = base64.b64encode(f.read()).decode('ascii')
    entry.update(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)
    return entry


def restore(entry):
    """Put one captured path back exactly as it was."""
    path = entry['path']
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
        os.remove(path)
    if not entry['exists']:
        _remove_made_directories(os.path.dirname(path), entry.get('missing_directory'))
        return
    if 'symlink' in entry:
        os.symlink(entry['symlink'], path)
        return
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.vpnguard.')
    with os.fdopen(fd, 'wb') as f:
        f.write(base64.b64decode(entry['content']))
    os.chown(tmp, entry['uid'], entry['gid'])
    os.chmod(tmp, entry['mode'])
    os.rename(tmp, path)


def _remove_made_directories(directory, topmost):
    if not topmost:
        return
    while True:
        remove_if_empty(directory)
        if directory == topmost or not directory.startswith(topmost):
            return
        directory = os.path.dirname(directory)


def remove_if_empty(directory):
    try:
        os.rmdir(directory)
    except OSError:
        pass  # not empty or not there: not only ours to remove


def load_json(path):
    """A JSON object saved by save(); None when missing, unreadable or not an object."""
    try:
        with open(path) as f:
            document = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def load(manifest):
    """The saved entries by path; None when the manifest is missing or corrupt."""
    entries = load_json(manifest)
    if entries is None or not all(isinstance(e, dict) and 'path' in e for e in entries.values()):
        return None
    return entries


def save(path, document):
    """Write a JSON object atomically, readable by root only."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path))
    with os.fdopen(fd, 'w') as f:
        json.dump(document, f, indent=1, sort_keys=True)
    os.rename(tmp, path)


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return None


def write_text(path, content, mode=0o644):
    """Replace path (a file or a symlink) with a regular file holding content."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.vpnguard.')
    with os.fdopen(fd, 'w') as f:
        f.write(content)
    os.chmod(tmp, mode)
    if os.path.islink(path):
        os.remove(path)
    os.rename(tmp, path)


class Link(str):
    """Wanted content of a path that must be a symbolic link to this target."""


def holds(path, content):
    """Whether path already is what content asks: text, a Link, or None for absent."""
    if content is None:
        return not os.path.lexists(path)
    if isinstance(content, Link):
        return os.path.islink(path) and os.readlink(path) == content
    return not os.path.islink(path) and read_text(path) == content


def sync(files, check_mode, own_directory=None):
    """Make each path hold its content (see holds); scripts (*.sh) are made executable.

    own_directory, a directory that is only ours, goes once the change leaves it empty;
    no other directory is ever removed. Returns the paths that differed, sorted; in check
    mode nothing is written.
    """
    changed = [path for path in sorted(files) if not holds(path, files[path])]
    if check_mode:
        return changed
    for path in changed:
        content = files[path]
        if os.path.lexists(path) and (content is None or isinstance(content, Link)):
            os.remove(path)
        if isinstance(content, Link):
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path), 0o755)
            os.symlink(content, path)
        elif content is not None:
            write_text(path, content, 0o755 if path.endswith('.sh') else 0o644)
    if changed and own_directory:
        remove_if_empty(own_directory)
    return changed
