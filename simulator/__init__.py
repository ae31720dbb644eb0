"""Local stand-ins for what AWS provides: the NSM device, a KMS endpoint, and the stack launcher."""
