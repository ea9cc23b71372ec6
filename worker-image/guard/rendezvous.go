package main

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

const recvTensorMethod = "/tensorflow.WorkerService/RecvTensor"

// rendezvousKey extracts field 2 (rendezvous_key) of a tensorflow.RecvTensorRequest.
// A key given more than once is refused: protobuf's last-one-wins rule would let a
// request carry one key for us and another for TensorFlow.
func rendezvousKey(msg []byte) (string, error) {
	key, seen := "", false
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return "", fmt.Errorf("malformed RecvTensorRequest: %v", protowire.ParseError(n))
		}
		msg = msg[n:]
		if num == 2 {
			if typ != protowire.BytesType {
				return "", errors.New("malformed RecvTensorRequest: rendezvous_key has the wrong wire type")
			}
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return "", fmt.Errorf("malformed RecvTensorRequest: %v", protowire.ParseError(m))
			}
			if seen {
				return "", errors.New("RecvTensorRequest carries rendezvous_key more than once")
			}
			key, seen = string(v), true
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return "", fmt.Errorf("malformed RecvTensorRequest: %v", protowire.ParseError(m))
		}
		msg = msg[m:]
	}
	if !seen {
		return "", errors.New("RecvTensorRequest has no rendezvous_key")
	}
	return key, nil
}

// dstDevice returns the destination device of a rendezvous key
// "src_device;src_incarnation_hex;dst_device;tensor_name;frame_id:iter_id".
func dstDevice(key string) (string, error) {
	parts := strings.Split(key, ";")
	if len(parts) != 5 {
		return "", fmt.Errorf("rendezvous key has %d parts, want 5", len(parts))
	}
	if !strings.HasPrefix(parts[2], "/job:") {
		return "", fmt.Errorf("rendezvous key destination %q is not a device name", parts[2])
	}
	return parts[2], nil
}

// deviceWithin: dst is the device prefix itself or a device below it
// ("/job:tfe/replica:0/task:1" admits ".../task:1/device:CPU:0", not ".../task:10").
func deviceWithin(dst, prefix string) bool {
	return dst == prefix || strings.HasPrefix(dst, prefix+"/")
}

// checkRecvTensor returns "" if identity may receive the tensor requested in msg, else the reason.
func (c *Config) checkRecvTensor(identity string, msg []byte) string {
	key, err := rendezvousKey(msg)
	if err != nil {
		return err.Error()
	}
	dst, err := dstDevice(key)
	if err != nil {
		return err.Error()
	}
	own, ok := c.deviceFor(identity)
	if !ok {
		return fmt.Sprintf("%s has no device in the guard's devices map, so it may receive no tensor", identity)
	}
	if !deviceWithin(dst, own) {
		return fmt.Sprintf("%s asked for a tensor addressed to %s", identity, dst)
	}
	return ""
}
