package keys

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	weftv1 "github.com/weftnet/weft/proto/weft/v1"
)

var (
	marshal   = protojson.MarshalOptions{UseProtoNames: true}
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// Encode renders m as the protojson stored in etcd (snake_case field names,
// so etcdctl output matches the .proto files).
func Encode(m proto.Message) []byte {
	b, err := marshal.Marshal(m)
	if err != nil {
		// protojson only fails on invalid UTF-8 in strings or on messages
		// that are not initialised, neither of which weft builds.
		panic(fmt.Sprintf("encode %T: %v", m, err))
	}
	return b
}

// EncodeString is Encode as a string, for clientv3.OpPut.
func EncodeString(m proto.Message) string { return string(Encode(m)) }

func decode[T proto.Message](what string, b []byte, m T) (T, error) {
	if err := unmarshal.Unmarshal(b, m); err != nil {
		var zero T
		return zero, fmt.Errorf("decode %s: %w", what, err)
	}
	return m, nil
}

// DecodeConfig decodes a ClusterConfig value.
func DecodeConfig(b []byte) (*weftv1.ClusterConfig, error) {
	return decode("cluster config", b, &weftv1.ClusterConfig{})
}

// DecodeEvent decodes an Event value.
func DecodeEvent(b []byte) (*weftv1.Event, error) {
	return decode("event", b, &weftv1.Event{})
}

// DecodeNode decodes a Node value. Values as Encode writes them take a
// fast path; every other value is protojson's to read or refuse.
func DecodeNode(b []byte) (*weftv1.Node, error) {
	if n, ok := fastNode(b); ok {
		return n, nil
	}
	return decode("node", b, &weftv1.Node{})
}

// DecodeRegistration decodes a Registration value.
func DecodeRegistration(b []byte) (*weftv1.Registration, error) {
	return decode("registration", b, &weftv1.Registration{})
}

// DecodeStatus decodes an AgentStatus value.
func DecodeStatus(b []byte) (*weftv1.AgentStatus, error) {
	return decode("agent status", b, &weftv1.AgentStatus{})
}

// DecodeConfigStatus decodes a ConfigStatus value.
func DecodeConfigStatus(b []byte) (*weftv1.ConfigStatus, error) {
	return decode("config status", b, &weftv1.ConfigStatus{})
}

// DecodeProblem decodes a Problem value.
func DecodeProblem(b []byte) (*weftv1.Problem, error) {
	return decode("problem", b, &weftv1.Problem{})
}
