package kube

import (
	"os"
	"testing"
)

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/run/netns/cni-1`:     `/run/netns/cni-1`,
		`/tmp/a\040b`:          `/tmp/a b`,
		`/tmp/tab\011x\134y`:   "/tmp/tab\tx\\y",
		`/tmp/short\04`:        `/tmp/short\04`,
		`/tmp/not-octal\09912`: `/tmp/not-octal\09912`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReadMountinfo reads this process's own mounts: the root is there,
// and every entry has a mount point and a filesystem type.
func TestReadMountinfo(t *testing.T) {
	ms, err := readMountinfo(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	root := false
	for _, m := range ms {
		if m.point == "" || m.fstype == "" {
			t.Errorf("incomplete entry %+v", m)
		}
		root = root || m.point == "/"
	}
	if !root {
		t.Errorf("no / among %d mounts", len(ms))
	}
}
