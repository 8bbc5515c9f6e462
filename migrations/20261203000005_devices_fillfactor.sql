-- Every health report updates its device's row (the latest facts and verdict). Pages left a fifth
-- empty keep those updates on the row's own page, as heap-only tuples that touch none of the table's
-- indexes; full pages move the new version elsewhere and insert it into every index. Pages written
-- from now on (and all of them after a VACUUM FULL) keep the room.
ALTER TABLE devices SET (fillfactor = 80);
