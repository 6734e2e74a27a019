package ctl

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// text is s as weftctl's tables print it: every rune a terminal would act
// on rather than show (ESC and the other C0 and C1 controls, newlines and
// tabs, Unicode format characters such as the bidirectional overrides) and
// every byte that is not UTF-8 is written as its Go escape (\x1b, \n,
// \u202e, \xff). The strings come from values in etcd, some written by the
// nodes (an agent's status); one node's credentials must not be able to
// drive the operator's terminal, break the table's columns or forge lines
// about other nodes.
func text(s string) string {
	clean := true
	for _, r := range s {
		if !shown(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case shown(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// shown reports whether r prints as itself (a space included).
func shown(r rune) bool {
	return r != utf8.RuneError && (r == ' ' || unicode.IsPrint(r))
}
