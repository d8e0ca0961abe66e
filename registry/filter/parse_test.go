package filter_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/podmesh/podmesh/registry/filter"
)

func TestSyntaxErrors(t *testing.T) {
	cases := []struct{ expr, want string }{
		{``, `filter: at offset 0: unexpected end of input (expected an expression)`},
		{`   `, `filter: at offset 3: unexpected end of input (expected an expression)`},
		{`Service.Port ==`, `filter: at offset 15: unexpected end of input (expected a value)`},
		{`Service.Port == == 1`, `filter: at offset 16: unexpected "==" (expected a value)`},
		{`Service.Port = 1`, `filter: at offset 13: unexpected "=" (expected an operator)`},
		{`Service.Port`, `filter: at offset 12: unexpected end of input (expected an operator)`},
		{`Service.Port > 1`, `filter: at offset 13: unexpected ">" (expected an operator)`},
		{`Service.Tags contains`, `filter: at offset 21: unexpected end of input (expected a value)`},
		{`Service.Tags is`, `filter: at offset 15: unexpected end of input (expected "empty")`},
		{`Service.Tags is not`, `filter: at offset 19: unexpected end of input (expected "empty")`},
		{`Service.Tags is full`, `filter: at offset 16: unexpected "full" (expected "empty")`},
		{`Service.Tags not has "x"`, `filter: at offset 17: unexpected "has" (expected "in", "contains" or "matches")`},
		{`Service.Tags CONTAINS x`, `filter: at offset 13: unexpected "CONTAINS" (expected an operator)`},
		{`"web" Service.Tags`, `filter: at offset 6: unexpected "Service" (expected "in" or "not in")`},
		{`"web" not contains Service.Tags`, `filter: at offset 10: unexpected "contains" (expected "in")`},
		{`1 == Service.Port`, `filter: at offset 2: unexpected "==" (expected "in" or "not in")`},
		{`"web" in`, `filter: at offset 8: unexpected end of input (expected a selector)`},
		{`"web" in "x"`, `filter: at offset 9: unexpected "\"x\"" (expected a selector)`},
		{`(Service.Port == 1`, `filter: at offset 18: unexpected end of input (expected "and", "or" or ")")`},
		{`Service.Port == 1)`, `filter: at offset 17: unexpected ")" (expected "and", "or" or end of input)`},
		{`Service.Port == 1 Service.ID == x`, `filter: at offset 18: unexpected "Service" (expected "and", "or" or end of input)`},
		{`Service.Port == 1 AND Service.ID == x`, `filter: at offset 18: unexpected "AND" (expected "and", "or" or end of input)`},
		{`Service.Tags contains "a" or`, `filter: at offset 28: unexpected end of input (expected an expression)`},
		{`()`, `filter: at offset 1: unexpected ")" (expected an expression)`},
		{`not`, `filter: at offset 3: unexpected end of input (expected an expression)`},
		{`and`, `filter: at offset 3: unexpected end of input (expected an operator)`},
		{`@`, `filter: at offset 0: unexpected "@" (expected an expression)`},
		{`Service.Name == é`, `filter: at offset 16: unexpected "é" (expected a value)`},
		// Selectors: indexes take quoted keys; no whitespace before "." or "[".
		{`Service.Meta["a"`, `filter: at offset 16: unexpected end of input (expected "]")`},
		{`Service.Meta[a] == 1`, `filter: at offset 13: unexpected "a" (expected a quoted key)`},
		{`Service.Meta[1] == 1`, `filter: at offset 13: unexpected "1]" (invalid number)`},
		{`Service. Meta == 1`, `filter: at offset 9: unexpected "Meta" (expected a name after ".")`},
		{`Service .Meta == 1`, `filter: at offset 8: unexpected "." (expected an operator)`},
		{`Service.Meta ["a"] == 1`, `filter: at offset 13: unexpected "[" (expected an operator)`},
		{`Service.1 == 1`, `filter: at offset 8: unexpected "1" (expected a name after ".")`},
		{`_x == 1`, `filter: at offset 0: unexpected "_" (expected an expression)`},
		// Literals.
		{`Service.Name == "abc`, `filter: at offset 16: unexpected "\"abc" (unterminated string)`},
		{"Service.Name == `abc", "filter: at offset 16: unexpected \"`abc\" (unterminated string)"},
		{`Service.Name == "\q"`, `filter: at offset 16: unexpected "\"\\q\"" (invalid string literal)`},
		{"Service.Name == \"a\nb\"", `filter: at offset 16: unexpected "\"a\nb\"" (invalid string literal)`},
		{`Service.Name == "` + strings.Repeat("x", 50), `filter: at offset 16: unexpected "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..." (unterminated string)`},
		{`Service.Port == 08`, `filter: at offset 16: unexpected "08" (invalid number)`},
		{`Service.Port == 1x`, `filter: at offset 16: unexpected "1x" (invalid number)`},
		{`Service.Port == 0x1F`, `filter: at offset 16: unexpected "0x1F" (invalid number)`},
		{`Service.Port == 1.`, `filter: at offset 16: unexpected "1." (invalid number)`},
		{`Service.Port == 1.5.6`, `filter: at offset 16: unexpected "1.5.6" (invalid number)`},
		{`Service.Port == 1]`, `filter: at offset 16: unexpected "1]" (invalid number)`},
		{`Service.Port == -`, `filter: at offset 16: unexpected "-" (expected a value)`},
		{`Service.Port == - 1`, `filter: at offset 16: unexpected "-" (expected a value)`},
		{`Service.ID matches "("`, `filter: at offset 19: unexpected "\"(\"" (invalid regular expression: missing closing ))`},
		{`Service.ID not matches "a**"`, `filter: at offset 23: unexpected "\"a**\"" (invalid regular expression: invalid nested repetition operator)`},
		{`Service.ID matches a.b(`, `filter: at offset 22: unexpected "(" (expected "and", "or" or end of input)`},
		{`Service.ID matches "x{1001}"`, `filter: at offset 19: unexpected "\"x{1001}\"" (invalid regular expression: invalid repeat count)`},
		// A lexical error is reported where the parser meets it, in source order.
		{`Service.Port == == "abc`, `filter: at offset 16: unexpected "==" (expected a value)`},
		{strings.Repeat("(", 101) + "a == 1" + strings.Repeat(")", 101), `filter: at offset 100: unexpected "(" (expression nested too deeply)`},
	}
	for _, tc := range cases {
		f, err := filter.Parse(tc.expr)
		if err == nil {
			t.Errorf("Parse(%q) = %s, want error %s", tc.expr, f, tc.want)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("Parse(%q) error\n got: %s\nwant: %s", tc.expr, err, tc.want)
		}
		var se *filter.SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("Parse(%q) error is %T, want *filter.SyntaxError", tc.expr, err)
			continue
		}
		if !strings.HasPrefix(tc.expr[se.Offset:], se.Token) {
			t.Errorf("Parse(%q): token %q is not at offset %d", tc.expr, se.Token, se.Offset)
		}
	}
	// The nesting limit is a limit, not an off-by-one: 100 levels parse.
	deep := strings.Repeat("(", 100) + "a == 1" + strings.Repeat(")", 100)
	if _, err := filter.Parse(deep); err != nil {
		t.Errorf("100 nested parentheses: %v", err)
	}
}

func TestString(t *testing.T) {
	cases := []struct{ expr, want string }{
		{`Service.Tags contains canary`, `Service.Tags contains "canary"`},
		{`"canary" in Service.Tags`, `Service.Tags contains "canary"`},
		{`canary in Service.Tags`, `Service.Tags contains "canary"`},
		{`"a" not in Service.Tags`, `Service.Tags not contains "a"`},
		{`Service.Port == 80`, `Service.Port == "80"`},
		{`Service.Port==80`, `Service.Port == "80"`},
		{`Service.Port != -1.5`, `Service.Port != "-1.5"`},
		{`Service.Meta["build-id"] == x`, `Service.Meta["build-id"] == "x"`},
		{`Service.Meta["version"] == x`, `Service.Meta.version == "x"`},
		{"Service.Meta[`a\"b`] == x", `Service.Meta["a\"b"] == "x"`},
		{`Service.Meta[""] is empty`, `Service.Meta[""] is empty`},
		{"Service.ID matches `^web-\\d+$`", `Service.ID matches "^web-\\d+$"`},
		{`Service.ID not matches "x"`, `Service.ID not matches "x"`},
		{`Service.Name == "tab\there"`, `Service.Name == "tab\there"`},
		{`Service.Name == "\u00e9\x00"`, `Service.Name == "é\x00"`},
		{`Service.Name == "a\"b"`, `Service.Name == "a\"b"`},
		{`Service.Name == foo.bar`, `Service.Name == "foo.bar"`},
		{`Service.Name == foo["x y"]`, `Service.Name == "foo.x y"`},
		{`Service.Name == and`, `Service.Name == "and"`},
		{`a == 1 or b == 2 or c == 3`, `a == "1" or b == "2" or c == "3"`},
		{`(a == 1 or b == 2) or c == 3`, `a == "1" or b == "2" or c == "3"`},
		{`a == 1 and (b == 2 and c == 3)`, `a == "1" and b == "2" and c == "3"`},
		{`a == 1 and (b == 2 or c == 3)`, `a == "1" and (b == "2" or c == "3")`},
		{`(a == 1 and b == 2) or c == 3`, `a == "1" and b == "2" or c == "3"`},
		{`not (a == 1 and b == 2)`, `not (a == "1" and b == "2")`},
		{`not not a == 1`, `a == "1"`},
		{`not (not a == 1)`, `a == "1"`},
		{`not not not a == 1`, `not a == "1"`},
		{`not a == 1 or b == 2 and c == 3`, `not a == "1" or b == "2" and c == "3"`},
		{`((a is empty))`, `a is empty`},
		{"  a is not empty\n", `a is not empty`},
		{`not(a == 1)`, `not a == "1"`},
		{`(a == 1)or(b == 2)`, `a == "1" or b == "2"`},
		{`Meta.and == x and Meta.or == y`, `Meta.and == "x" and Meta.or == "y"`},
	}
	for _, tc := range cases {
		f, err := filter.Parse(tc.expr)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.expr, err)
			continue
		}
		got := f.String()
		if got != tc.want {
			t.Errorf("Parse(%q).String()\n got: %s\nwant: %s", tc.expr, got, tc.want)
		}
		checkCanonical(t, got)
	}
}

// checkCanonical asserts that a canonical form parses back to itself.
func checkCanonical(t *testing.T, s string) {
	t.Helper()
	f, err := filter.Parse(s)
	if err != nil {
		t.Fatalf("canonical form %q does not parse: %v", s, err)
	}
	if again := f.String(); again != s {
		t.Fatalf("canonical form is not stable:\n first: %s\nsecond: %s", s, again)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`Service.Tags contains "canary" and Node.Meta.rack_name == "2304"`,
		`not (Checks.Status == critical or Service.Port != 80) and "x" not in Service.Meta`,
		"Service.Meta[`build-id`] matches `^a.*$` or Service.ID is not empty",
		`Service.Port == -1.5 or Service.Weights.Passing == "0x10"`,
		`Service.Name == "a\"b\u00e9\x00"`,
		`((a == 1)) or not not b is empty`,
		`Service.Proxy.Upstreams.DestinationName == db`,
		`Service.Port == 08`,
		`Service.ID matches "("`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		flt, err := filter.Parse(expr)
		if err != nil {
			var se *filter.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q) error is %T, want *filter.SyntaxError", expr, err)
			}
			if se.Offset < 0 || se.Offset > len(expr) || !strings.HasPrefix(expr[se.Offset:], se.Token) {
				t.Fatalf("Parse(%q): token %q not at offset %d", expr, se.Token, se.Offset)
			}
			return
		}
		checkCanonical(t, flt.String())
		// Compiling and evaluating arbitrary filters against real types must not panic.
		for _, e := range entries {
			_, _ = flt.Match(e)
		}
		_, _ = flt.Match(kinds{})
	})
}

func BenchmarkMatch(b *testing.B) {
	for _, bc := range []struct{ name, expr string }{
		{"tag", `Service.Tags contains "canary"`},
		{"node-meta", `Node.Meta.rack_name == "2304"`},
		{"checks-any", `Checks.Status == "critical"`},
		{"prometheus-mix", `Service.Tags contains "canary" and Node.Meta.rack_name == "2304" and Checks.Status != "passing" and Service.ID matches "^web-"`},
		{"tagged-address", `Service.TaggedAddresses.lan.Port == 8443`},
	} {
		f, err := filter.Parse(bc.expr)
		if err != nil {
			b.Fatal(err)
		}
		if ok, err := f.Match(web1); !ok || err != nil {
			b.Fatalf("%s: Match = %v, %v", bc.expr, ok, err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = f.Match(web1)
			}
		})
	}
}

func BenchmarkParse(b *testing.B) {
	const expr = `Service.Tags contains "canary" and Node.Meta.rack_name == "2304" and Checks.Status != "passing" and Service.ID matches "^web-"`
	b.ReportAllocs()
	for b.Loop() {
		if _, err := filter.Parse(expr); err != nil {
			b.Fatal(err)
		}
	}
}

// Documented divergence: a leading "not" is always the operator.
func TestLeadingNotIsOperator(t *testing.T) {
	_, err := filter.Parse(`not in Service.Tags`)
	if want := `filter: at offset 7: unexpected "Service" (expected an operator)`; err == nil || err.Error() != want {
		t.Errorf("Parse(`not in Service.Tags`) = %v, want %s", err, want)
	}
}
