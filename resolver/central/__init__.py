"""The central store on PostgreSQL (issue 14): many sites, one policy and one record."""
