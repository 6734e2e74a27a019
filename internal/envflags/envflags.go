// Package envflags lets every flag of weft's binaries come from the
// environment: --etcd-endpoints from WEFT_ETCD_ENDPOINTS, and so on. A flag
// given on the command line wins over the environment, the environment
// wins over the flag's default, and an empty variable counts as unset (so
// an environment file can list a variable without a value).
package envflags

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Var returns the environment variable of the flag called name:
// WEFT_ETCD_ENDPOINTS for etcd-endpoints.
func Var(name string) string {
	return "WEFT_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Apply sets each flag of the parsed fs that the command line did not set
// from its variable (see Var), looked up with getenv (os.Getenv in the
// binaries). Flags named in skip never come from the environment. It
// returns the names of the flags now set, on the command line or from
// the environment, and an error naming the variable for every value a
// flag refuses.
func Apply(fs *flag.FlagSet, getenv func(string) string, skip ...string) (map[string]bool, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || contains(skip, f.Name) {
			return
		}
		env := Var(f.Name)
		v := getenv(env)
		if v == "" {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			return
		}
		set[f.Name] = true
	})
	return set, errors.Join(errs...)
}

func contains(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}
