package testenv

import (
	"context"

	"github.com/weftnet/weft/proto/keys"
	"github.com/weftnet/weft/testenv/garbage"
)

// InjectGarbage writes the garbage of case g into the cluster's store by
// hand (package garbage), as an operator with etcdctl or an attacker with
// write access would; Undo on the result puts the old value back.
func (c *Cluster) InjectGarbage(ctx context.Context, g garbage.Case, t garbage.Target) (*garbage.Injected, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return garbage.Inject(ctx, cl, keys.New(weftPrefix), g, t)
}

// UndoGarbage puts back what InjectGarbage changed.
func (c *Cluster) UndoGarbage(ctx context.Context, in *garbage.Injected) error {
	cl, err := c.Client()
	if err != nil {
		return err
	}
	defer cl.Close()
	return in.Undo(ctx, cl)
}
