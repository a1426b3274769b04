"""Stands in for pwsh where ansible-test's validate-modules reads a PowerShell module's argument spec.

PowerShell cannot be installed on CI's machine (not in Debian, PyPI or npm), so
ansible-test could not read win_wfp_killswitch.ps1's spec and the module was
skipped (validate-modules!skip, which certification does not accept). The spec
is data: this reads the module's `$spec = @{...}` with tree-sitter-powershell and
prints it as ansible-test's ps_argspec.ps1 does (the spec as JSON), so that
validate-modules compares it with the documentation like any module's.

Only literals are evaluated: hashtables, arrays (@(...) and a, b), strings
without interpolation, integers, $true/$false/$null, variables assigned such a
value earlier in the script, and + of hashtables or arrays. Anything else fails
loudly, naming the construct: the spec must stay a literal for this to read it.
Called for anything but ps_argspec.ps1 (pslint), it fails, as a missing pwsh would.
"""

import json
import os
import sys

PASS_THROUGH = {'pipeline', 'pipeline_chain', 'logical_expression', 'bitwise_expression', 'comparison_expression',
                'multiplicative_expression', 'format_expression', 'range_expression', 'unary_expression',
                'expression_with_unary_operator', 'primary_expression', 'value', 'parenthesized_expression',
                'sub_expression', 'statement_list', 'array_literal_expression', 'additive_expression'}


class NotALiteral(ValueError):
    def __init__(self, node, why='not a literal'):
        super(NotALiteral, self).__init__('%s at line %d: %s (%r)' % (
            why, node.start_point[0] + 1, node.type, node.text.decode('utf-8', 'replace')[:60]))


def named(node):
    return [c for c in node.children if c.is_named and c.type != 'comment']


class Evaluator(object):
    def __init__(self):
        self.variables = {'true': True, 'false': False, 'null': None}

    def value(self, node):
        kind = node.type
        if kind == 'hash_literal_expression':
            return self.hashtable(node)
        if kind == 'array_expression':  # @( ... )
            inner = named(node)
            if not inner:
                return []
            item = self.value(inner[0])
            return item if isinstance(item, list) else [item]
        if kind == 'array_literal_expression' and len(named(node)) > 1:  # a, b
            return [self.value(c) for c in named(node)]
        if kind == 'additive_expression' and len(node.children) == 3:
            left, operator, right = node.children
            if operator.type != '+':
                raise NotALiteral(node, 'only + is evaluated')
            return self.plus(node, self.value(left), self.value(right))
        if kind == 'string_literal':
            return self.string(node)
        if kind in ('integer_literal', 'decimal_integer_literal'):
            return int(node.text.decode())
        if kind == 'variable':
            name = node.text.decode()[1:].lower()
            if name not in self.variables:
                raise NotALiteral(node, 'variable not assigned a literal before')
            return self.variables[name]
        if kind in PASS_THROUGH and len(named(node)) == 1:
            return self.value(named(node)[0])
        raise NotALiteral(node)

    def plus(self, node, left, right):
        if isinstance(left, dict) and isinstance(right, dict):
            duplicated = set(left) & set(right)
            if duplicated:  # PowerShell refuses a duplicate key in hashtable addition
                raise NotALiteral(node, 'duplicate keys %s in hashtable addition' % sorted(duplicated))
            return dict(left, **right)
        if isinstance(left, list):
            return left + (right if isinstance(right, list) else [right])
        raise NotALiteral(node, 'only hashtables or arrays are added')

    def hashtable(self, node):
        result = {}
        body = [c for c in named(node) if c.type == 'hash_literal_body']
        for entry in (named(body[0]) if body else []):
            if entry.type != 'hash_entry':
                raise NotALiteral(entry)
            key_node = entry.child_by_field_name('key') or named(entry)[0]
            value_node = named(entry)[-1]
            key = key_node.text.decode().strip()
            if key[:1] in ('"', "'"):
                key = key[1:-1]
            result[key] = self.value(value_node)
        return result

    def string(self, node):
        text = node.text.decode()
        if text.startswith("'") and text.endswith("'"):
            return text[1:-1].replace("''", "'")
        if text.startswith('"') and text.endswith('"'):
            inner = text[1:-1]
            if '$' in inner or '`' in inner:
                raise NotALiteral(node, 'expandable string')
            return inner
        raise NotALiteral(node, 'here-strings are not evaluated')

    def run(self, root):
        """Evaluate top-level assignments in order; return $spec."""
        for statement in self.statements(root):
            assignment = statement
            while assignment.type in ('pipeline',) and len(named(assignment)) == 1:
                assignment = named(assignment)[0]
            if assignment.type != 'assignment_expression':
                continue
            target = assignment.children[0]
            if target.type == 'left_assignment_expression':
                names = [n for n in self.walk(target) if n.type == 'variable']
                if len(names) != 1 or names[0].text.decode() != target.text.decode().strip():
                    continue
                name = names[0].text.decode()[1:].lower()
            else:
                continue
            try:
                self.variables[name] = self.value(assignment.children[-1])
            except NotALiteral:
                if name == 'spec':
                    raise
                self.variables.pop(name, None)
            if name == 'spec':
                return self.variables['spec']
        raise ValueError('no top-level "$spec = @{...}" assignment found')

    def statements(self, root):
        for child in named(root):
            if child.type == 'statement_list':
                yield from named(child)
            else:
                yield child

    def walk(self, node):
        yield node
        for child in node.children:
            yield from self.walk(child)


def main(argv):
    if len(argv) < 3 or os.path.basename(argv[1]) != 'ps_argspec.ps1':
        sys.stderr.write('pwsh-argspec: only reads argument specs (ps_argspec.ps1), got %r\n' % argv[1:])
        return 127
    import tree_sitter_powershell
    from tree_sitter import Language, Parser

    manifest = json.loads(argv[2])
    with open(manifest['module_path'], 'rb') as f:
        source = f.read()
    tree = Parser(Language(tree_sitter_powershell.language())).parse(source)
    if tree.root_node.has_error:
        sys.stderr.write('%s does not parse as PowerShell\n' % manifest['module_path'])
        return 1
    try:
        spec = Evaluator().run(tree.root_node)
    except ValueError as e:
        sys.stderr.write('%s: $spec cannot be read without running PowerShell: %s\n' % (manifest['module_path'], e))
        return 1
    sys.stdout.write(json.dumps(spec))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
