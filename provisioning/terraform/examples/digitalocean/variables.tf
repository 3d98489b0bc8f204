variable "name" {
  description = "Droplet name, also its host name at the escrow server."
  type        = string
  default     = "web-1"
}

variable "region" {
  type    = string
  default = "fra1"
}

variable "size" {
  type    = string
  default = "s-1vcpu-1gb"
}

variable "image" {
  description = "A Debian 12 or 13 image: the agent package runs on its nodejs (18.19 or newer)."
  type        = string
  default     = "debian-13-x64"
}

variable "ssh_key_fingerprints" {
  type    = list(string)
  default = []
}

variable "escrow_url" {
  description = "The escrow server, e.g. https://escrow.example:8443 (reachable from the droplet and from Terraform)."
  type        = string
}

variable "escrow_ca_file" {
  description = "PEM file of the escrow server's CA or self-signed certificate; empty = public CA."
  type        = string
  default     = ""
}

variable "operator_token" {
  description = "Operator API token; pass it as TF_VAR_operator_token, never in a file under version control."
  type        = string
  sensitive   = true
}

variable "agent_package_url" {
  description = "Where the droplet downloads dist/deb/unlockd-agent_VERSION_amd64.deb (object storage, a release page...)."
  type        = string
}

variable "agent_package_sha256" {
  description = "SHA-256 of that package (sha256sum dist/deb/unlockd-agent_*.deb, first field)."
  type        = string
}

variable "enroll_cidrs" {
  description = "Networks the droplet may enroll and unlock from, e.g. the VPC range when the escrow server is in the same VPC. [] = any."
  type        = list(string)
  default     = []
}
